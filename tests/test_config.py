"""Training-config validation: every mistake is caught before training starts and names its key."""

from pathlib import Path

import pytest

from reweigh.train.config import ConfigError, load_config

YAMLS = Path(__file__).resolve().parents[1] / 'yamls'

BASE = """
run_name: test-run
max_duration: 10ba
global_train_batch_size: 8
train_loader:
  dataset: {local: DATA}
"""


@pytest.fixture
def write(tmp_path):
    (tmp_path / 'data').mkdir()

    def _write(extra: str = '') -> Path:
        path = tmp_path / 'cfg.yaml'
        path.write_text(BASE.replace('DATA', str(tmp_path / 'data')) + extra)
        return path

    return _write


def test_minimal_config_gets_defaults(write):
    cfg = load_config(write())
    assert cfg.model.family == 'gpt2' and cfg.algorithms.loss_reweighting is None
    assert cfg.history.enabled and cfg.precision == 'fp32' and cfg.device == 'auto'


def test_overrides_switch_reweighting_on_and_set_nested_values(write):
    cfg = load_config(write(), ['algorithms.loss_reweighting.strategy=quadratic', 'max_duration=3ba',
                                'algorithms.loss_reweighting.warmup=0.1dur', 'model.config.n_layer=3'])
    lr = cfg.algorithms.loss_reweighting
    assert (lr.strategy, lr.r, lr.warmup) == ('quadratic', 1.0, '0.1dur')
    assert cfg.max_duration == '3ba' and cfg.model.config.n_layer == 3


def test_null_override_turns_reweighting_off(write):
    cfg = load_config(write('algorithms:\n  loss_reweighting: {strategy: linupper}\n'),
                      ['algorithms.loss_reweighting=null'])
    assert cfg.algorithms.loss_reweighting is None


@pytest.mark.parametrize(
    ('extra', 'overrides', 'key', 'message'),
    [
        ('colour: blue\n', [], 'colour', 'not in'),
        ('', ['optimizer.learning_rate=1'], 'optimizer.learning_rate', 'not in'),
        ('', ['global_train_batch_size=eight'], 'global_train_batch_size', 'could not be converted'),
        ('', ['device_train_microbatch_size=16'], 'device_train_microbatch_size', 'larger than global_train_batch_size'),
        ('', ['device_train_microbatch_size=0'], 'device_train_microbatch_size', 'positive int'),
        ('', ['algorithms.loss_reweighting.r=-1'], 'algorithms.loss_reweighting.r', 'finite number > 0'),
        ('', ['algorithms.loss_reweighting.strategy=fancy'], 'algorithms.loss_reweighting.strategy', 'Unknown strategy'),
        ('', ['algorithms.loss_reweighting.warmup=soon'], 'algorithms.loss_reweighting.warmup', 'time string'),
        ('', ['algorithms.loss_reweighting.r_schedule.alpha_f=0'], 'algorithms.loss_reweighting.r_schedule.alpha_f',
         'must be > 0'),
        ('', ['train_loader.dataset.local=/no/such/dir'], 'train_loader.dataset.local', 'does not exist'),
        ('', ['train_loader.dataset.remote=ftp://host/x'], 'train_loader.dataset.remote', "unsupported URI scheme 'ftp'"),
        ('', ['train_loader.dataset.remote=s3://'], 'train_loader.dataset.remote', 'names no bucket'),
        ('', ['train_loader.dataset.proportions.code=-1'], 'train_loader.dataset.proportions.code', 'number > 0'),
        ('', ['load_path=/no/such/checkpoint.pt'], 'load_path', 'does not exist'),
        ('', ['save_folder=azure://container/runs'], 'save_folder', 'not azure://'),
        ('', ['object_store_outage_s=0'], 'object_store_outage_s', 'must be > 0'),
        ('', ['save_folder=s3://b/runs', 'fsdp_config={state_dict_type: sharded}'], 'fsdp_config.state_dict_type',
         'cannot go to a remote save_folder'),
        ('', ['model.family=bert'], 'model.family', 'not one of'),
        ('', ['model.loss_impl=fused'], 'model.loss_impl', 'not one of'),
        ('', ['model.loss_impl=cce', 'device=cpu'], 'model.loss_impl', 'CUDA only|cut-cross-entropy'),
        ('', ['model.chunk_size=0'], 'model.chunk_size', 'must be >= 1'),
        ('', ['precision=amp_bf16', 'device=cpu'], 'precision', 'needs a GPU'),
        ('', ['fsdp_config={sharding_strategy: FULL_SHARD}', 'device=cpu'], 'fsdp_config', 'FSDP needs GPUs'),
        ('', ['model.config.n_layers=2'], 'model.config.n_layers', 'not a GPT2Config field'),
        ('', ['optimizer.name=adam'], 'optimizer.name', 'not one of'),
        ('', ['optimizer.lr=0'], 'optimizer.lr', 'must be > 0'),
        ('', ['scheduler.t_warmup=5ep'], 'scheduler.t_warmup', "unit 'ep' not allowed"),
        ('', ['max_duration=ten'], 'max_duration', 'must be a Composer time string'),
        ('', ['precision=fp8'], 'precision', 'not one of'),
        ('', ['device=tpu'], 'device', 'not one of'),
        ('', ['run_name=../escape'], 'run_name', 'letters, digits'),
        ('', ['save_folder=http://example.com/x'], 'save_folder', "unsupported URI scheme 'http'"),
        ('', ['history.flush_interval=2ep'], 'history.flush_interval', "unit 'ep' not allowed"),
        ('callbacks:\n  profiler: {}\n', [], 'callbacks.profiler', 'unknown callback'),
        ('loggers:\n  slack: {}\n', [], 'loggers.slack', 'unknown logger'),
    ],
)
def test_bad_configs_name_the_key(write, extra, overrides, key, message):
    with pytest.raises(ConfigError, match=f"config key '{key}'.*{message}"):
        load_config(write(extra), overrides)


def test_missing_required_keys_are_listed(tmp_path):
    path = tmp_path / 'cfg.yaml'
    path.write_text('run_name: x\n')
    with pytest.raises(ConfigError, match='required key.*global_train_batch_size.*max_duration.*train_loader.dataset.local'):
        load_config(path)


@pytest.mark.parametrize(
    ('text', 'message'),
    [('- a list\n', 'YAML mapping'), ('key: [unclosed\n', 'cannot read config'),
     ('!!python/object:os.system {}\n', 'cannot read config')],
)
def test_unreadable_or_unsafe_yaml(tmp_path, text, message):
    path = tmp_path / 'cfg.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_and_bad_override_syntax(write, tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(tmp_path / 'nope.yaml')
    with pytest.raises(ConfigError, match='must look like key=value'):
        load_config(write(), ['max_duration'])


@pytest.mark.parametrize('name', sorted(p.name for p in YAMLS.glob('*.yaml') if not p.name.startswith('llmfoundry-')))
def test_shipped_yamls_validate(name):
    """Every ``reweigh train`` config in yamls/ (``llmfoundry-*.yaml`` are llm-foundry's, run in tests/test_llmfoundry.py)."""
    cfg = load_config(YAMLS / name)
    assert cfg.run_name
