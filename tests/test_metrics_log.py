"""MetricsLog: metrics.jsonl written during training, and kept free of duplicates across a resumption."""

import json
import math

import pytest
from composer.core import Evaluator
from lm_helpers import SEQ, TokenDataset, make_trainer, tiny_gpt2
from torch.utils.data import DataLoader

from reweigh.algorithms import LossReweighting
from reweigh.analysis.runs import METRICS_FILE, load_run, metrics_line, parse_metrics, truncate_metrics
from reweigh.callbacks import MetricsLog

BATCH = 8


def _trainer(folder, **kwargs):
    evaluator = Evaluator(label='val/toy', dataloader=DataLoader(TokenDataset(n=16, seed=1), batch_size=BATCH),
                          metric_names=['LanguageCrossEntropy', 'LanguagePerplexity'])
    return make_trainer(
        tiny_gpt2(), [LossReweighting('linupper', warmup='2ba')], max_duration='6ba',
        eval_dataloader=evaluator, eval_interval='2ba', loggers=[MetricsLog(str(folder / METRICS_FILE))],
        save_folder=str(folder / 'checkpoints'), save_interval='3ba', **kwargs,
    )


def test_every_step_and_evaluation_once_with_tokens(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.fit()
    trainer.close()
    run = load_run(tmp_path)
    train = run.train.to_pylist()
    assert [r['step'] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r['tokens'] for r in train] == [s * BATCH * SEQ for s in range(1, 7)]
    # before the warm-up ends the optimised loss is the plain mean; after, the weighted one differs from it
    assert [r['loss'] == pytest.approx(r['loss_reweighting/mean_loss'], abs=1e-6) for r in train] == [True] * 2 + [False] * 4
    assert [r['loss_reweighting/active'] for r in train] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    evals = run.eval.to_pylist()
    assert [(r['step'], r['domain'], r['tokens']) for r in evals] == [(s, 'toy', s * BATCH * SEQ) for s in (2, 4, 6)]
    assert all(r['perplexity'] == pytest.approx(math.exp(r['loss']), rel=1e-4) for r in evals)


def test_resumed_run_drops_the_dead_attempts_lines_and_writes_each_step_once(tmp_path):
    straight = tmp_path / 'straight'
    trainer = _trainer(straight)
    trainer.fit()
    trainer.close()
    expected = load_run(straight)

    resumed = tmp_path / 'resumed'
    (resumed / 'checkpoints').mkdir(parents=True)
    # What an attempt killed at step 5 leaves: the lines up to step 5 (one cut short) and a checkpoint at 3.
    lines = (straight / METRICS_FILE).read_text().splitlines()
    kept = [line for line in lines if json.loads(line)['step'] <= 5]
    (resumed / METRICS_FILE).write_text('\n'.join(kept) + '\n' + kept[-1][:17])
    trainer = _trainer(resumed, load_path=str(straight / 'checkpoints' / 'ep0-ba3-rank0.pt'))
    assert int(trainer.state.timestamp.batch) == 3
    trainer.fit()
    trainer.close()
    got = load_run(resumed)
    assert got.train['step'].to_pylist() == [1, 2, 3, 4, 5, 6]
    assert [(r['step'], r['domain']) for r in got.eval.to_pylist()] == [(2, 'toy'), (4, 'toy'), (6, 'toy')]
    for table in ('train', 'eval'):  # the resumed run repeats steps 4..6 exactly
        for column in ('loss', 'tokens'):
            want = getattr(expected, table)[column].to_pylist()
            assert getattr(got, table)[column].to_pylist() == pytest.approx(want, rel=1e-5)
    raw = parse_metrics((resumed / METRICS_FILE).read_text())
    assert [r['step'] for r in raw if r['kind'] == 'train'] == [1, 2, 3, 4, 5, 6]  # no line twice
    assert [r['step'] for r in raw if r['kind'] == 'eval'] == [2, 4, 6]


def test_truncate_and_parse_tolerate_what_a_kill_leaves(tmp_path):
    path = tmp_path / METRICS_FILE
    good = [metrics_line('train', s, 8 * s, {'loss': 1.0 / s}) for s in (1, 2, 3)]
    path.write_text('\n'.join(good) + '\n{"kind": "train", "st')
    assert [r['step'] for r in parse_metrics(path.read_text())] == [1, 2, 3]  # a cut last line: no warning
    assert truncate_metrics(path, 2) == 2
    assert path.read_text() == good[0] + '\n' + good[1] + '\n'
    path.write_text(good[0] + '\nnot json\n' + good[1] + '\n')
    with pytest.warns(UserWarning, match='line 2 is not a metrics row'):
        assert [r['step'] for r in parse_metrics(path.read_text(), 'x')] == [1, 2]
    assert metrics_line('eval', 5, None, {'loss': float('nan')}, domain='d') == \
        '{"kind": "eval", "step": 5, "tokens": null, "domain": "d", "loss": null}'
    with pytest.raises(ValueError, match="collides"):
        metrics_line('train', 1, 8, {'step': 1.0})
