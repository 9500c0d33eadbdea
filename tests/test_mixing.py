"""Online domain mixing: the policies, the stream that obeys them, and training with them (resume, ranks, buckets)."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_train_cli import (
    NO_DROPOUT,
    TINY_CPU,
    _history,
    _overrides,
    killed_and_resumed,
    one_and_two_ranks,
    trained,
)

from reweigh.analysis.proportions import domain_proportions, mix_from_mean_weights
from reweigh.analysis.runs import METRICS_FILE, parse_metrics
from reweigh.cli.main import main
from reweigh.pipeline import ReweighStreamingDataset, build_mixing_dataloader
from reweigh.pipeline.mixed_stream import MixingSampler
from reweigh.pipeline.mixing import DomainWindow, ODMPolicy, make_policy, register_policy

pytestmark = pytest.mark.usefixtures('streaming_shm')


def _window(rows, weight, loss):
    return DomainWindow(np.array(rows, float), np.array(weight, float), np.array(loss, float))


# --- the policies ---------------------------------------------------------------------------------------------------

def test_the_weights_policy_targets_curates_formula_from_the_starting_mix():
    base = np.array([0.3, 0.3, 0.4])
    policy = make_policy('weights', base, temperature=0.5, floor=0.05, smoothing=0.0)
    window = _window([30, 30, 40], [0.36, 0.36, 0.28], [150, 160, 60])
    mean_weight = np.array([0.36 / 0.3, 0.36 / 0.3, 0.28 / 0.4])
    got = policy.update(window, np.array([0.2, 0.2, 0.6]))  # the target starts from the base, not the mix in use
    np.testing.assert_allclose(got, mix_from_mean_weights(base, mean_weight, 0.5, 0.05))
    np.testing.assert_allclose(got, base * mean_weight ** 2 / (base * mean_weight ** 2).sum())
    # the same rule as `reweigh curate --proportions` on a run whose rows were the base mix
    summary = pa.table({'domain': [0, 1, 2], 'weight_share': [0.36, 0.36, 0.28], 'row_share': base.tolist()})
    assert list(domain_proportions(summary, 0.5, 0.05).values()) == pytest.approx(got.tolist())


def test_the_weights_policy_smooths_floors_and_remembers_a_domain_the_window_missed():
    base = np.array([0.5, 0.5])
    policy = make_policy('weights', base, temperature=1.0, floor=0.1, smoothing=0.5)
    current = np.array([0.5, 0.5])
    after = policy.update(_window([50, 50], [0.99, 0.01], [1, 1]), current)
    target = mix_from_mean_weights(base, np.array([1.98, 0.02]), 1.0, 0.1)
    assert target.tolist() == pytest.approx([0.9, 0.1])  # floored
    np.testing.assert_allclose(after, 0.5 * current + 0.5 * target)
    again = policy.update(_window([100, 0], [1.0, 0.0], [1, 0]), after)  # domain 1 unseen: its mean weight is kept
    np.testing.assert_allclose(policy.mean_weight, [1.0 / (100 / 100), 0.02])
    assert again.sum() == pytest.approx(1.0) and (again >= 0.1 - 1e-12).all()


def test_the_weights_policy_anchored_on_uniform_ignores_the_configured_mix():
    base, uniform = np.array([0.7, 0.15, 0.15]), np.full(3, 1 / 3)
    policy = make_policy('weights', base, temperature=0.5, floor=0.05, smoothing=0.0, anchor='uniform')
    np.testing.assert_allclose(policy.initial(), uniform)  # the stream starts where ODM starts
    window = _window([70, 15, 15], [0.5, 0.25, 0.25], [1, 1, 1])
    mean_weight = np.array([0.5 / 0.7, 0.25 / 0.15, 0.25 / 0.15])
    got = policy.update(window, base)
    np.testing.assert_allclose(got, mix_from_mean_weights(uniform, mean_weight, 0.5, 0.05))
    stream = make_policy('weights', base, temperature=0.5, floor=0.05, smoothing=0.0).update(window, base)
    assert got[0] < stream[0]  # from equal proportions the disfavoured domain ends lower than from its 70%


def test_odm_follows_the_papers_exp3_update():
    policy = ODMPolicy(np.array([0.2, 0.8]), alpha=0.9)
    assert policy.initial().tolist() == [0.5, 0.5]  # ODM starts uniform, whatever the starting mix
    k, pi = 2, np.array([0.5, 0.5])
    got = policy.update(_window([10, 10], [0.5, 0.5], [40, 20]), pi)  # mean losses 4 and 2
    reward = 0.1 * np.array([4, 2]) / pi
    eps0, eps1 = 1 / k, min(1 / k, np.sqrt(np.log(k) / (k * 1)))
    expected = (1 - k * eps1) * np.exp(eps0 * reward) / np.exp(eps0 * reward).sum() + eps1
    np.testing.assert_allclose(got, expected)
    got2 = policy.update(_window([0, 10], [0, 1], [0, 30]), got)  # domain 0 unseen: its reward is kept
    reward = np.array([reward[0], 0.9 * reward[1] + 0.1 * 3 / got[1]])
    eps2 = min(1 / k, np.sqrt(np.log(k) / (k * 2)))
    expected2 = (1 - k * eps2) * np.exp(eps1 * reward) / np.exp(eps1 * reward).sum() + eps2
    np.testing.assert_allclose(got2, expected2)
    assert got2.sum() == pytest.approx(1.0)


@pytest.mark.parametrize('name, options', [('weights', {'temperature': 0.5}), ('odm', {})])
def test_a_policy_restored_from_its_state_continues_as_it_would_have(name, options):
    rng = np.random.default_rng(0)
    windows = [_window(rng.integers(1, 50, 3), rng.random(3), rng.random(3) * 100) for _ in range(6)]
    straight, p = make_policy(name, np.array([0.2, 0.3, 0.5]), **options), None
    p = straight.initial()
    trail = []
    for w in windows:
        p = straight.update(w, p)
        trail.append(p)
    first = make_policy(name, np.array([0.2, 0.3, 0.5]), **options)
    q = first.initial()
    for w in windows[:3]:
        q = first.update(w, q)
    second = make_policy(name, np.array([0.2, 0.3, 0.5]), **options)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # checkpoints keep it as plain data
    for w, expected in zip(windows[3:], trail[3:]):
        q = second.update(w, q)
        np.testing.assert_allclose(q, expected)


def test_bad_policy_settings_are_clear_errors():
    base = np.array([0.3, 0.3, 0.4])
    with pytest.raises(ValueError, match="unknown mixing policy 'nope'; known: .*odm.*weights"):
        make_policy('nope', base)
    with pytest.raises(ValueError, match=r'floor must be in \[0, 1/3\] for 3 domains, got 0.5'):
        make_policy('weights', base, floor=0.5)
    with pytest.raises(ValueError, match='smoothing must be in'):
        make_policy('weights', base, smoothing=1.0)
    with pytest.raises(ValueError, match="mixing policy 'odm': .*temperature"):
        make_policy('odm', base, temperature=2.0)
    with pytest.raises(ValueError, match='alpha must be in'):
        make_policy('odm', base, alpha=1.0)


def test_a_registered_policy_is_made_by_name():
    @register_policy('tests-favour-last', overwrite=True)
    class FavourLast:
        def __init__(self, base, share=0.9):
            self.k, self.share = len(base), share

        def initial(self):
            return np.full(self.k, 1 / self.k)

        def update(self, window, current):
            p = np.full(self.k, (1 - self.share) / (self.k - 1))
            p[-1] = self.share
            return p

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    policy = make_policy('tests-favour-last', np.ones(2), share=0.7)
    assert policy.update(_window([1, 1], [1, 1], [1, 1]), policy.initial()).tolist() == pytest.approx([0.3, 0.7])


# --- the stream -----------------------------------------------------------------------------------------------------

def _plans(sampler, steps, pushes=None):
    """The global plans of ``steps`` steps; ``pushes`` maps a step to the proportions pushed after it."""
    out = []
    for step in range(steps):
        update, indices = sampler.plan()
        out.append((update, indices.tolist()))
        if pushes and step in pushes:
            sampler.push((step + 1) // sampler.interval, pushes[step])
    return out


def test_the_stream_is_deterministic_and_draws_in_the_mix():
    def run(seed):
        return _plans(MixingSampler([300, 300, 300], np.array([0.6, 0.3, 0.1]), global_batch=16, seed=seed,
                                    interval=1000, lag=0), 100)

    assert run(1) == run(1) and run(1) != run(2)
    domains = np.array([i // 300 for _, indices in run(1) for i in indices])
    assert np.bincount(domains, minlength=3) / len(domains) == pytest.approx([0.6, 0.3, 0.1], abs=0.03)


def test_no_sample_is_drawn_twice_in_a_pass_and_a_domain_that_runs_out_starts_another():
    sampler = MixingSampler([7, 50], np.array([0.5, 0.5]), global_batch=4, seed=3, interval=1000, lag=0)
    drawn = [i for _, indices in _plans(sampler, 40) for i in indices]
    small = [i for i in drawn if i < 7]
    assert sampler.passes[0] == len(small) // 7 >= 5  # the small domain ran out several times, nothing stopped
    for p in range(len(small) // 7):
        assert sorted(small[7 * p:7 * (p + 1)]) == list(range(7))  # each pass: every sample once
    assert small[:7] != small[7:14]  # a new pass is a new permutation
    large = [i for i in drawn if i >= 7]
    assert len(set(large[:50])) == min(50, len(large))


def test_an_update_applies_from_its_first_step_and_no_batch_is_planned_before_its_mix_is_decided():
    sampler = MixingSampler([100, 100], np.array([0.5, 0.5]), global_batch=8, seed=0, interval=4, lag=2)
    for _ in range(6):  # steps 0-5: the first update applies from step 4 + 2
        sampler.plan()
    with pytest.raises(RuntimeError, match='asked for step 6 before mix update 1 was made.*raise mixing.lag'):
        sampler.plan()
    assert sampler.push(1, np.array([0.0, 1.0])) == 6
    update, indices = sampler.plan()
    assert update == 1 and all(i >= 100 for i in indices)
    assert sampler.mix_at(5)[0] == 0 and sampler.mix_at(7)[1].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match='updates come in order'):
        sampler.push(3, np.array([0.5, 0.5]))


def test_bad_stream_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r'domain\(s\) \[1\] have none'):
        MixingSampler([5, 0], np.array([0.5, 0.5]), global_batch=4)
    with pytest.raises(ValueError, match='mixing.interval must be > 0'):
        MixingSampler([5, 5], np.array([0.5, 0.5]), global_batch=4, interval=0)
    with pytest.raises(ValueError, match='positive multiple of the ranks'):
        MixingSampler([5, 5], np.array([0.5, 0.5]), global_batch=5, world=2)
    with pytest.raises(ValueError, match='finite non-negative'):
        MixingSampler([5, 5], np.array([0.5, -0.5]), global_batch=4)


def test_every_rank_takes_its_slice_of_one_plan():
    kwargs = dict(global_batch=8, seed=4, interval=3, lag=1)
    pushes = {2: np.array([0.1, 0.9]), 5: np.array([0.8, 0.2])}
    one = MixingSampler([40, 40], np.array([0.5, 0.5]), **kwargs)
    ranks = [MixingSampler([40, 40], np.array([0.5, 0.5]), rank=r, world=2, **kwargs) for r in (0, 1)]
    iters = [iter(s) for s in ranks]
    for step, (update, indices) in enumerate(_plans(one, 10, pushes)):
        got = [next(it) for it in iters]
        assert [i for batch in got for i, _ in batch] == indices
        assert {u for batch in got for _, u in batch} == {update}
        if step in pushes:
            for s in ranks:
                s.push((step + 1) // 3, pushes[step])


def test_the_state_at_a_trained_step_resumes_the_stream_though_the_sampler_ran_ahead():
    kwargs = dict(global_batch=4, seed=9, interval=3, lag=4)
    pushes = {2: np.array([0.2, 0.8]), 5: np.array([0.9, 0.1]), 8: np.array([0.5, 0.5]), 11: np.array([0.3, 0.7])}
    straight = _plans(MixingSampler([9, 30], np.array([0.5, 0.5]), **kwargs), 18, pushes)
    ahead = MixingSampler([9, 30], np.array([0.5, 0.5]), **kwargs)
    _plans(ahead, 10, {s: p for s, p in pushes.items() if s < 6})  # planned 0-9; training did 6 steps (pushed 2)
    state = json.loads(json.dumps(ahead.state_dict(6)))
    resumed = MixingSampler([9, 30], np.array([0.5, 0.5]), **kwargs)
    resumed.load_state_dict(state)
    assert resumed.step == 6
    rest = []
    for step in range(6, 18):
        update, indices = resumed.plan()
        rest.append((update, indices.tolist()))
        if step in pushes:
            resumed.push((step + 1) // 3, pushes[step])
    assert rest == straight[6:]
    with pytest.raises(ValueError, match='had domains of'):
        MixingSampler([9, 31], np.array([0.5, 0.5]), **kwargs).load_state_dict(state)


def _ids(loader, steps, pushes):
    it, ids = iter(loader), []
    for step in range(steps):
        batch = next(it)
        ids.append((batch['sample_id'].tolist(), batch['mix'].tolist()))
        if step in pushes:
            loader.batch_sampler.push((step + 1) // loader.batch_sampler.interval, pushes[step])
    return ids


def test_dataloader_workers_do_not_change_the_stream(small_dataset, tmp_path):
    root, _ = small_dataset
    pushes = {4: np.array([0.1, 0.1, 0.8]), 9: np.array([0.7, 0.2, 0.1]), 14: np.array([0.3, 0.3, 0.4])}

    def loader(workers):
        return build_mixing_dataloader(ReweighStreamingDataset(root), batch_size=4, seed=2, interval=5, lag=4,
                                       num_workers=workers)

    plain, workers = _ids(loader(0), 16, pushes), _ids(loader(2), 16, pushes)
    assert plain == workers
    assert {m for _, mixes in plain[10:14] for m in mixes} == {1} and {m for _, m2 in plain[14:] for m in m2} == {2}
    with pytest.raises(ValueError, match='mixing.lag=2 is shorter than the 4 batches 2 dataloader workers fetch ahead'):
        build_mixing_dataloader(ReweighStreamingDataset(root), batch_size=4, lag=2, num_workers=2)


# --- training -------------------------------------------------------------------------------------------------------

MIXED = dict(max_duration='30ba', save_interval='5ba', eval_interval='10ba', console_log_interval='1ba',
             mixing='{policy: weights, interval: 4, lag: 2, temperature: 0.5}')


def _mix_lines(run_dir):
    rows = parse_metrics((run_dir / METRICS_FILE).read_text())
    return [{k: v for k, v in r.items() if k.startswith('mixing/') or k == 'step'} for r in rows
            if r['kind'] == 'train' and 'mixing/update' in r]


@pytest.fixture(scope='module')
def straight_mixed(small_dataset, tmp_path_factory):
    return trained(small_dataset[0], tmp_path_factory.mktemp('mixed') / 'straight', 'straight', **MIXED)


def test_a_mixed_run_moves_the_mix_and_records_it(straight_mixed):
    lines = _mix_lines(straight_mixed)
    assert [r['step'] for r in lines] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert [r['mixing/first_step'] for r in lines] == [0, 6, 10, 14, 18, 22, 26, 30]
    names = ('code', 'docs', 'boilerplate')
    for r in lines:
        assert sum(r[f'mixing/proportion/{n}'] for n in names) == pytest.approx(1.0)
    assert lines[-1]['mixing/proportion/boilerplate'] < lines[0]['mixing/proportion/boilerplate'] - 0.05
    history = _history(straight_mixed)
    assert len(history) == 30 * 8 and history.groupby('step').size().eq(8).all()
    # each row records the mix it was drawn under: the last update whose first step is at or before the row's step
    expected = {s: max(r['mixing/update'] for r in lines if r['mixing/first_step'] <= s) for s in range(30)}
    assert {s: set(g) for s, g in history.groupby('step')['mix']} == {s: {u} for s, u in expected.items()}


def test_the_same_mixed_config_gives_the_same_samples_and_mixes(small_dataset, straight_mixed, tmp_path):
    again = trained(small_dataset[0], tmp_path / 'again', 'again', **MIXED)
    assert _mix_lines(again) == _mix_lines(straight_mixed)
    assert _history(again).sample_id.tolist() == _history(straight_mixed).sample_id.tolist()


def test_a_mixed_run_killed_and_resumed_equals_the_uninterrupted_one(small_dataset, straight_mixed, tmp_path):
    # killed mid-window: at the checkpoint of step 15, with an update every 4 steps
    run_dir = killed_and_resumed(small_dataset[0], tmp_path / 'killed', 'killed', 'ep0-ba15-rank0.pt', **MIXED)
    assert _mix_lines(run_dir) == _mix_lines(straight_mixed)
    history, straight = _history(run_dir), _history(straight_mixed)
    assert history.step.tolist() == straight.step.tolist()
    assert history.sample_id.tolist() == straight.sample_id.tolist()
    assert history.weight.to_numpy() == pytest.approx(straight.weight.to_numpy(), rel=1e-5, abs=1e-7)


def test_two_gloo_ranks_apply_the_same_mix_at_the_same_step_as_one_rank(small_dataset, tmp_path):
    data_root, _ = small_dataset
    one_and_two_ranks(data_root, tmp_path, {
        'model.config': NO_DROPOUT, 'max_duration': '12ba', 'eval_interval': '12ba', 'save_interval': '12ba',
        'mixing': '{policy: weights, interval: 3, lag: 1, temperature: 0.5}'})
    single, double = _history(tmp_path / 'one'), _history(tmp_path / 'two')
    assert set(double['rank']) == {0, 1}
    assert double.step.tolist() == single.step.tolist()
    assert double.sample_id.tolist() == single.sample_id.tolist()  # the same samples, so the same mix, every step
    one_mix, two_mix = _mix_lines(tmp_path / 'one'), _mix_lines(tmp_path / 'two')
    assert len(one_mix) == 5 and [r.keys() for r in two_mix] == [r.keys() for r in one_mix]
    for a, b in zip(two_mix, one_mix):
        assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-4)


def test_a_mixed_stream_from_a_bucket(small_dataset, s3_env, tmp_path):
    from test_pipeline_remote import upload_corpus

    data_root, _ = small_dataset
    upload_corpus('s3', data_root, 'mixed-data')
    overrides = _overrides(tmp_path / 'cache', tmp_path / 'run', run_name='bucket', autoresume='false',
                           max_duration='8ba', eval_interval='8ba', save_interval='8ba',
                           mixing='{policy: odm, interval: 2, lag: 1}')
    overrides += ['train_loader.dataset.remote=s3://reweigh/mixed-data', f'eval_loader.dataset.local={data_root}']
    assert main(['train', str(TINY_CPU), *overrides]) == 0
    lines = _mix_lines(tmp_path / 'run')
    assert [r['step'] for r in lines] == [0, 2, 4, 6, 8]
    assert lines[0]['mixing/proportion/code'] == pytest.approx(1 / 3)
    assert len(_history(tmp_path / 'run')) == 8 * 8


@pytest.mark.parametrize('mixing, message', [
    ('{policy: nope}', "config key 'mixing': unknown mixing policy 'nope'; known: "),
    ('{interval: 0}', "config key 'mixing': mixing.interval must be > 0"),
    ('{floor: 0.5}', "config key 'mixing': floor must be in [0, 1/3] for 3 domains, got 0.5"),
    ('{policy: odm, temperature: 2}', "config key 'mixing': mixing policy 'odm': "),
    ('{anchor: middle}', "config key 'mixing': anchor must be one of 'stream', 'uniform', got 'middle'"),
])
def test_bad_mixing_settings_are_one_line_and_exit_2(small_dataset, tmp_path, capsys, mixing, message):
    data_root, _ = small_dataset
    assert main(['train', str(TINY_CPU), *_overrides(data_root, tmp_path / 'run', run_name='bad', mixing=mixing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_lag_shorter_than_the_workers_prefetch_is_refused(small_dataset, tmp_path, capsys):
    data_root, _ = small_dataset
    overrides = _overrides(data_root, tmp_path / 'run', run_name='bad', mixing='{lag: 1}') + ['train_loader.num_workers=2']
    assert main(['train', str(TINY_CPU), *overrides]) == 2
    assert 'mixing.lag=1 is shorter than the 4 batches 2 dataloader workers fetch ahead' in capsys.readouterr().err


def test_torch_is_not_needed_by_the_policies():
    code = 'import sys, numpy as np; import reweigh.pipeline.mixing as m; m.make_policy("odm", np.ones(3)); ' \
           'print("torch" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == 'False'


def test_fit_called_in_pieces_trains_the_samples_of_one_fit(small_dataset):
    """Composer iterates the loader anew at every ``fit`` (and would spin it forward to the trained step); with
    workers, the batches fetched ahead at the end of a fit are dropped. OnlineMixing rewinds the sampler to the
    trained step at every fit, so ``fit(3 steps)`` then ``fit(5 steps)`` trains what one ``fit(8 steps)`` does.
    (Without dropout: Composer draws dropout's random numbers differently over two fits.)"""
    from composer import Trainer
    from composer.core import Callback

    from reweigh.callbacks import OnlineMixing
    from reweigh.models import build_causal_lm
    from reweigh.pipeline import natural_mix

    class Seen(Callback):
        def __init__(self):
            self.ids = []

        def after_dataloader(self, state, logger):
            self.ids.append(state.batch['sample_id'].tolist())

    def trained(pieces):
        data_root, _ = small_dataset
        source = ReweighStreamingDataset(data_root)
        policy = make_policy('weights', natural_mix(source))
        loader = build_mixing_dataloader(source, policy.initial(), batch_size=4, interval=2, lag=4, num_workers=2)
        torch.manual_seed(0)
        model = build_causal_lm('gpt2', n_layer=1, n_embd=32, n_head=2, vocab_size=512, n_positions=source.seq_len,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        seen = Seen()
        trainer = Trainer(model=model, train_dataloader=loader, max_duration='8ba', callbacks=[OnlineMixing(policy), seen],
                          optimizers=torch.optim.SGD(model.parameters(), lr=0.1), device='cpu', progress_bar=False,
                          device_train_microbatch_size=4)
        for steps in pieces:
            trainer.fit(duration=f'{steps}ba')
        trainer.close()
        return seen.ids, loader.batch_sampler.schedule

    assert trained([3, 5]) == trained([8])
