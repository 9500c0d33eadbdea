"""Load a ``reweigh train`` config: YAML, dotted overrides, then every check, before anything heavy starts.

Unknown keys, wrong types and impossible values raise :class:`ConfigError` naming the key. The schema is
:mod:`reweigh.train.schema`; Composer (for durations) and the model and algorithm modules (for their own checks)
are imported when a config is validated, so :class:`ConfigError` and :func:`validate_uri` come without them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reweigh.io.uri import READ_SCHEMES, UPLOAD_SCHEMES, is_remote, scheme_of, schemes_text
from reweigh.safety.names import check_name
from reweigh.train.schema import TrainConfig

if TYPE_CHECKING:
    from composer.core import Time, TimeUnit

__all__ = ['ConfigError', 'load_config', 'validate_uri']


class ConfigError(ValueError):
    """A training config that cannot run; the message names the offending key.

    Example:
        >>> from reweigh.train.config import ConfigError
        >>> isinstance(ConfigError("config key 'seed': must be an int."), ValueError)
        True
    """


OPTIMIZERS = ('decoupled_adamw', 'adamw', 'decoupled_sgdw', 'sgd')
SCHEDULERS = ('cosine_with_warmup', 'linear_with_warmup', 'constant_with_warmup', 'constant')
R_SCHEDULES = ('linear', 'constant')
CALLBACKS = ('speed_monitor', 'lr_monitor', 'memory_monitor', 'runtime_estimator')
LOGGERS = ('file', 'tensorboard', 'mlflow', 'wandb', 'in_memory')
PRECISIONS = ('fp32', 'amp_bf16', 'amp_fp16')
DEVICES = ('auto', 'cpu', 'gpu')


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a YAML train config, apply ``key=value`` overrides, and validate it.

    Args:
        path (str | Path): The YAML file (loaded with a safe loader).
        overrides (Sequence[str]): Dotted overrides such as ``max_duration=20ba`` or
            ``algorithms.loss_reweighting.r=0.5``.

    Returns:
        TrainConfig: A validated config (an OmegaConf structured config with ``TrainConfig`` fields).

    Raises:
        ConfigError: For a missing or unreadable file, malformed YAML or override, unknown keys,
            wrong types, or impossible values; the message names the key.

    Example:
        >>> import tempfile, os
        >>> from reweigh.train.config import load_config
        >>> yaml = 'run_name: demo\\nmax_duration: 10ba\\nglobal_train_batch_size: 8\\n'
        >>> yaml += f'train_loader: {{dataset: {{local: {tempfile.mkdtemp()}}}}}\\n'
        >>> with tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False) as f:
        ...     _ = f.write(yaml)
        >>> cfg = load_config(f.name, ['algorithms.loss_reweighting.r=0.5'])
        >>> cfg.algorithms.loss_reweighting.r, cfg.algorithms.loss_reweighting.strategy
        (0.5, 'linupper')
        >>> os.unlink(f.name)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {str(path)!r} does not exist.')
    try:
        user = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and OSError alike
        raise ConfigError(f'cannot read config {str(path)!r}: {e}') from e
    if not isinstance(user, DictConfig):
        raise ConfigError(f'config {str(path)!r} must be a YAML mapping at the top level.')
    for item in overrides:
        if '=' not in item or not item.split('=', 1)[0].strip():
            raise ConfigError(f'override {item!r} must look like key=value (e.g. max_duration=20ba).')
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), user, cli)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f'required key(s) missing: {", ".join(missing)}.')
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, 'full_key', None) or '?'
        msg = str(e).split('\n')[0]
        raise ConfigError(f'config key {key!r}: {msg}') from None
    _validate(cfg)
    return cfg  # type: ignore[return-value]


def _fail(key: str, message: str) -> NoReturn:
    raise ConfigError(f'config key {key!r}: {message}')


def _check_name(key: str, value: Any) -> None:
    """A value that becomes a path component or object key: :func:`reweigh.safety.check_name`'s rule."""
    try:
        check_name('the value', value)
    except ValueError as e:
        _fail(key, str(e))


def _check_time(key: str, value: str, units: Sequence[TimeUnit]) -> Time:
    from reweigh.algorithms.times import parse_time

    try:
        return parse_time(value, units, key.rsplit('.', 1)[-1])
    except ValueError as e:
        _fail(key, str(e))


def validate_uri(key: str, value: str) -> str:
    """Accept a local path or an object-store URI with a known scheme; reject anything else.

    Raises:
        ConfigError: For an empty value, an unsupported scheme, or a URI with no bucket.

    Example:
        >>> from reweigh.train.config import validate_uri
        >>> validate_uri('save_folder', 's3://bucket/runs')
        's3://bucket/runs'
        >>> validate_uri('save_folder', 'ftp://host/runs')
        Traceback (most recent call last):
        ...
        reweigh.train.config.ConfigError: config key 'save_folder': unsupported URI scheme 'ftp'; use a local path or ...
    """
    if not value or not str(value).strip():
        _fail(key, 'must not be empty.')
    match = re.match(r'^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$', value)
    if match:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme not in READ_SCHEMES:
            _fail(key, f'unsupported URI scheme {scheme!r}; use a local path or one of: {schemes_text(READ_SCHEMES)}.')
        if not rest or rest.startswith('/'):
            _fail(key, f'{value!r} names no bucket.')
    elif '\x00' in value:
        _fail(key, 'contains a NUL byte.')
    return value


def _prepared_by_train_loader(cfg: Any, ds: Any) -> bool:
    train = cfg.train_loader.dataset
    return ds is not train and train.prepare_default and train.remote is None and ds.local == train.local


def _validate(cfg: Any) -> None:
    """Checks OmegaConf's type system cannot express."""
    from composer.core import TimeUnit

    from reweigh.algorithms.loss_reweighting import LossReweighting
    from reweigh.models.causal_lm import _FAMILIES  # the families build_causal_lm knows

    _check_name('run_name', cfg.run_name)  # it names folders and object keys
    if cfg.model.family not in _FAMILIES:
        _fail('model.family', f'{cfg.model.family!r} is not one of {", ".join(sorted(_FAMILIES))}.')
    config_cls = _FAMILIES[cfg.model.family][0]
    defaults = config_cls()
    for k in cfg.model.config:
        if not hasattr(defaults, k):
            _fail(f'model.config.{k}', f'not a {config_cls.__name__} field.')
    from reweigh.models.linear_ce import LOSS_IMPLS

    if cfg.model.loss_impl not in LOSS_IMPLS:
        _fail('model.loss_impl', f'{cfg.model.loss_impl!r} is not one of {", ".join(LOSS_IMPLS)}.')
    if cfg.model.loss_impl == 'cce':
        from reweigh.models.linear_ce import cce_available

        if not cce_available():
            _fail('model.loss_impl', "'cce' needs the cut-cross-entropy package: pip install 'reweigh[cce]'.")
    if cfg.model.chunk_size is not None and cfg.model.chunk_size < 1:
        _fail('model.chunk_size', f'must be >= 1, got {cfg.model.chunk_size}.')

    for loader_key in ('train_loader', 'eval_loader'):
        loader = cfg[loader_key]
        if loader is None:
            continue
        ds = loader.dataset
        validate_uri(f'{loader_key}.dataset.local', ds.local)
        if is_remote(ds.local):
            _fail(f'{loader_key}.dataset.local', 'must be a local folder; put object-store URIs in "remote".')
        if ds.remote is not None:
            validate_uri(f'{loader_key}.dataset.remote', ds.remote)
        elif not Path(ds.local).exists() and not ds.prepare_default and not _prepared_by_train_loader(cfg, ds):
            _fail(f'{loader_key}.dataset.local', f'{ds.local!r} does not exist (set remote, or prepare_default: true).')
        for name, p in (ds.proportions or {}).items():
            _check_name(f'{loader_key}.dataset.proportions.{name}', name)
            if not (isinstance(p, (int, float)) and math.isfinite(p) and p > 0):
                _fail(f'{loader_key}.dataset.proportions.{name}', f'must be a number > 0, got {p!r}.')
        if loader.num_workers < 0:
            _fail(f'{loader_key}.num_workers', f'must be >= 0, got {loader.num_workers}.')

    if cfg.optimizer.name not in OPTIMIZERS:
        _fail('optimizer.name', f'{cfg.optimizer.name!r} is not one of {", ".join(OPTIMIZERS)}.')
    if not cfg.optimizer.lr > 0:
        _fail('optimizer.lr', f'must be > 0, got {cfg.optimizer.lr}.')
    if len(cfg.optimizer.betas) != 2 or not all(0 <= b < 1 for b in cfg.optimizer.betas):
        _fail('optimizer.betas', f'must be two numbers in [0, 1), got {list(cfg.optimizer.betas)}.')
    if cfg.optimizer.weight_decay < 0:
        _fail('optimizer.weight_decay', f'must be >= 0, got {cfg.optimizer.weight_decay}.')
    if cfg.scheduler.name not in SCHEDULERS:
        _fail('scheduler.name', f'{cfg.scheduler.name!r} is not one of {", ".join(SCHEDULERS)}.')
    _check_time('scheduler.t_warmup', cfg.scheduler.t_warmup, (TimeUnit.BATCH, TimeUnit.DURATION))

    lr_cfg = cfg.algorithms.loss_reweighting
    if lr_cfg is not None:
        key = 'algorithms.loss_reweighting'
        try:  # the algorithm's own checks, each error mapped to its key
            LossReweighting(strategy=lr_cfg.strategy, r=lr_cfg.r, delta=lr_cfg.delta, warmup=lr_cfg.warmup)
        except ValueError as e:
            field = next((f for f in ('warmup', 'delta', 'r') if str(e).startswith(f'{f} ')), 'strategy')
            _fail(f'{key}.{field}', str(e))
        if lr_cfg.r_schedule is not None:
            if lr_cfg.r_schedule.name not in R_SCHEDULES:
                _fail(f'{key}.r_schedule.name', f'{lr_cfg.r_schedule.name!r} is not one of {", ".join(R_SCHEDULES)}.')
            for name in ('alpha_i', 'alpha_f'):
                if not lr_cfg.r_schedule[name] > 0:
                    _fail(f'{key}.r_schedule.{name}', f'must be > 0 (r must stay positive), got {lr_cfg.r_schedule[name]}.')
            _check_time(f'{key}.r_schedule.t_max', lr_cfg.r_schedule.t_max, (TimeUnit.BATCH, TimeUnit.DURATION))

    for name in cfg.callbacks:
        if name not in CALLBACKS:
            _fail(f'callbacks.{name}', f'unknown callback; known: {", ".join(CALLBACKS)}.')
    for name in cfg.loggers:
        if name not in LOGGERS:
            _fail(f'loggers.{name}', f'unknown logger; known: {", ".join(LOGGERS)}.')

    duration_units = (TimeUnit.BATCH, TimeUnit.EPOCH, TimeUnit.TOKEN, TimeUnit.SAMPLE)
    _check_time('max_duration', cfg.max_duration, duration_units)
    _check_time('eval_interval', cfg.eval_interval, duration_units + (TimeUnit.DURATION,))
    _check_time('save_interval', cfg.save_interval, duration_units + (TimeUnit.DURATION,))
    _check_time('console_log_interval', cfg.console_log_interval, (TimeUnit.BATCH, TimeUnit.EPOCH))
    if cfg.global_train_batch_size <= 0:
        _fail('global_train_batch_size', f'must be > 0, got {cfg.global_train_batch_size}.')
    micro = cfg.device_train_microbatch_size
    if micro is not None and micro != 'auto':
        if not isinstance(micro, int) or isinstance(micro, bool) or micro <= 0:
            _fail('device_train_microbatch_size', f'must be a positive int or "auto", got {micro!r}.')
        if micro > cfg.global_train_batch_size:
            _fail(
                'device_train_microbatch_size',
                f'{micro} is larger than global_train_batch_size ({cfg.global_train_batch_size}).',
            )
    if cfg.precision not in PRECISIONS:
        _fail('precision', f'{cfg.precision!r} is not one of {", ".join(PRECISIONS)}.')
    if cfg.device not in DEVICES:
        _fail('device', f'{cfg.device!r} is not one of {", ".join(DEVICES)}.')
    if cfg.run_dir is not None:
        validate_uri('run_dir', cfg.run_dir)
        if is_remote(cfg.run_dir):
            _fail('run_dir', 'must be a local folder; put object-store URIs in save_folder.')
    if cfg.save_folder is not None:
        validate_uri('save_folder', cfg.save_folder)
        scheme = scheme_of(cfg.save_folder)
        if scheme is not None and scheme not in UPLOAD_SCHEMES:
            _fail('save_folder', f'checkpoints go to a local folder or {schemes_text(UPLOAD_SCHEMES)}, not {scheme}://.')
        if scheme is not None and (cfg.fsdp_config or {}).get('state_dict_type') == 'sharded':
            _fail('fsdp_config.state_dict_type', 'sharded checkpoints (folders) cannot go to a remote save_folder; '
                  'use "full", or a local save_folder.')
    if not cfg.object_store_outage_s > 0:
        _fail('object_store_outage_s', f'must be > 0, got {cfg.object_store_outage_s}.')
    if cfg.load_path is not None:
        validate_uri('load_path', cfg.load_path)
        if not is_remote(cfg.load_path) and not Path(cfg.load_path).exists():
            _fail('load_path', f'{cfg.load_path!r} does not exist.')
    if cfg.history.folder is not None:
        validate_uri('history.folder', cfg.history.folder)
        if is_remote(cfg.history.folder):
            _fail('history.folder', 'must be a local folder; parts are uploaded next to a remote save_folder.')
    _check_time('history.flush_interval', cfg.history.flush_interval, (TimeUnit.BATCH,))
    if cfg.dist_timeout <= 0:
        _fail('dist_timeout', f'must be > 0, got {cfg.dist_timeout}.')
    _validate_cpu_run(cfg)


def _validate_cpu_run(cfg: Any) -> None:
    """What cannot run without a GPU: mixed precision and FSDP under Composer 0.32.1, and the ``cce`` loss."""
    if cfg.device == 'gpu' or (cfg.precision == 'fp32' and not cfg.fsdp_config and cfg.model.loss_impl != 'cce'):
        return
    import torch

    if cfg.device == 'auto' and torch.cuda.is_available():
        return
    if cfg.model.loss_impl == 'cce':
        _fail('model.loss_impl', "'cce' runs on CUDA only; this run is on the CPU. Use chunked (or auto), or device: gpu.")
    if cfg.precision != 'fp32':
        _fail('precision', f'{cfg.precision} needs a GPU (Composer trains on CPU in fp32 only); this run is on the CPU. '
              'Set precision: fp32, or device: gpu.')
    _fail('fsdp_config', "FSDP needs GPUs: Composer's FSDP calls torch.cuda.current_device(), and FSDP2 over gloo "
          'sums gradients instead of averaging them (pytorch/pytorch#162338); this run is on the CPU. Remove '
          'fsdp_config (several CPU ranks then train with DDP over gloo), or set device: gpu.')
