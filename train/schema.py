"""The training-config schema of ``reweigh train``: dataclasses, defaults, and which keys make an arm.

The schema follows llm-foundry's train configs; :func:`reweigh.train.config.load_config` loads a YAML file into it
and validates it. A field that does not make two runs different arms (names, places, seeds, logging, settings that
leave the arithmetic alone) says so where it is declared (:func:`not_arm`), and :func:`not_arm_keys` lists those
fields for :mod:`reweigh.analysis.compare`. This module imports the standard library only.

Example:
    >>> from reweigh.train.schema import LossReweightingConfig, TrainConfig, not_arm_keys
    >>> LossReweightingConfig().strategy, TrainConfig().seed
    ('linupper', 17)
    >>> 'seed' in not_arm_keys(), 'optimizer.lr' in not_arm_keys()
    (True, False)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from reweigh.algorithms.constants import (
    DEFAULT_DELTA,
    DEFAULT_R,
    DEFAULT_STRATEGY,
    DEFAULT_TOKEN_NORMALIZE,
    DEFAULT_WARMUP_STEPS,
)

__all__ = [
    'MISSING',
    'AlgorithmsConfig',
    'DatasetConfig',
    'HistoryConfig',
    'LeaseConfig',
    'LoaderConfig',
    'LossReweightingConfig',
    'ModelConfig',
    'OptimizerConfig',
    'PreemptionConfig',
    'RScheduleConfig',
    'SchedulerConfig',
    'TokenizerConfig',
    'TrainConfig',
    'not_arm',
    'not_arm_keys',
]

MISSING = '???'
"""A required value: OmegaConf's marker for a missing key (``omegaconf.MISSING`` is this string)."""


def not_arm(**kwargs: Any) -> Any:
    """A dataclass field that does not make two runs different arms: ``field(**kwargs)`` marked as such.

    Example:
        >>> from dataclasses import dataclass, fields
        >>> from reweigh.train.schema import not_arm
        >>> @dataclass
        ... class Demo:
        ...     seed: int = not_arm(default=17)
        >>> fields(Demo)[0].metadata['arm'], Demo().seed
        (False, 17)
    """
    return field(metadata={'arm': False}, **kwargs)


@dataclass
class ModelConfig:
    family: str = 'gpt2'
    """``gpt2`` or ``llama``: the model is built from its ``transformers`` config (no download)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``GPT2Config``/``LlamaConfig``; ``vocab_size`` defaults to the tokenizer's."""
    loss_impl: str = 'auto'
    """``auto``, ``chunked``, ``cce`` or ``materialized``: how the loss is computed (see ``ReweighCausalLM``)."""
    chunk_size: Optional[int] = None
    """Tokens per chunk of the ``chunked`` loss; default: 256 MiB of fp32 logits per chunk."""


@dataclass
class TokenizerConfig:
    name: Optional[str] = None
    """Hugging Face name or local path; default: the tokenizer stored with the prepared dataset."""


@dataclass
class DatasetConfig:
    local: str = MISSING
    """Local folder: the prepared dataset itself, or the cache for ``remote`` (then not part of an arm)."""
    remote: Optional[str] = None
    """Root of a prepared dataset in object storage (``s3://``, ``gs://``, ...)."""
    prepare_default: bool = False
    """If ``local`` holds no dataset (and ``remote`` is unset), prepare the embedded default corpus there."""
    proportions: Optional[dict[str, float]] = None
    """Domain mixing proportions by domain name; default: every domain in its natural size."""
    shuffle: bool = True
    shuffle_seed: Optional[int] = not_arm(default=None)
    """Default: the run's ``seed``."""


@dataclass
class LoaderConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    num_workers: int = not_arm(default=0)
    drop_last: bool = True


@dataclass
class OptimizerConfig:
    name: str = 'decoupled_adamw'
    lr: float = 6.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    weight_decay: float = 0.0


@dataclass
class SchedulerConfig:
    name: str = 'cosine_with_warmup'
    t_warmup: str = '0ba'
    alpha_f: float = 0.1


@dataclass
class RScheduleConfig:
    name: str = 'linear'
    alpha_i: float = 1.0
    alpha_f: float = 1.0
    t_max: str = '1dur'


@dataclass
class LossReweightingConfig:
    strategy: str = DEFAULT_STRATEGY
    r: float = DEFAULT_R
    delta: float = DEFAULT_DELTA
    warmup: str = f'{DEFAULT_WARMUP_STEPS}ba'
    token_normalize: bool = DEFAULT_TOKEN_NORMALIZE
    r_schedule: Optional[RScheduleConfig] = None
    fused: Any = 'auto'
    """Compile the step after the all-gather into one region: ``auto`` (on CUDA), ``true`` or ``false``. Its results
    equal the eager step's up to float rounding, so two runs that differ in it are two arms."""


@dataclass
class AlgorithmsConfig:
    loss_reweighting: Optional[LossReweightingConfig] = None
    """Present: train with reweighting. Absent: the uniform baseline."""


@dataclass
class MixingConfig:
    policy: str = 'weights'
    """``weights`` (the reweighting weights steer the mix), ``odm`` (the ODM bandit, the baseline) or a policy
    registered with :func:`reweigh.pipeline.register_policy`."""
    interval: int = 25
    """Steps between updates of the proportions."""
    lag: int = 8
    """Steps between an update and the first step it applies to; at least ``num_workers * 2``."""
    temperature: Optional[float] = None
    """``weights``: ``T`` of ``q ∝ b * m ** (1 / T)`` (default 1)."""
    floor: Optional[float] = None
    """``weights``: the least proportion of any domain (default 0.05)."""
    smoothing: Optional[float] = None
    """``weights``: the share of the mix in use each update keeps (default 0.5)."""
    anchor: Optional[str] = None
    """``weights``: what the target starts from: ``stream`` (default), the configured or natural mix, or ``uniform``,
    equal proportions (where ODM starts; the stream starts there too)."""
    alpha: Optional[float] = None
    """``odm``: the reward's smoothing (default 0.9)."""
    options: dict[str, Any] = field(default_factory=dict)
    """More arguments of the policy (a registered one's)."""
    strategy: str = DEFAULT_STRATEGY
    """Without ``algorithms.loss_reweighting``: the strategy whose weights steer (for the policy only)."""
    r: float = DEFAULT_R
    """Its temperature."""


@dataclass
class HistoryConfig:
    enabled: bool = True
    """Record every sample's loss and weight per step (a uniform run records too, unchanged)."""
    folder: Optional[str] = not_arm(default=None)
    """Default: ``{run_dir}/history``."""
    flush_interval: str = not_arm(default='100ba')


@dataclass
class LeaseConfig:
    force: bool = not_arm(default=False)
    """Take the run folder's lease even from a holder that looks alive (``reweigh train --force``)."""
    stale_after_s: float = not_arm(default=600.0)
    """A lease whose holder has not renewed it for this long (it renews every 30 s) is taken over; on the same host
    a lease whose process is gone is taken over at once."""


@dataclass
class PreemptionConfig:
    check_every: int = not_arm(default=10)
    """On several ranks, the steps between the ranks' agreement on a SIGTERM/SIGUSR1 (one all-reduce); one rank
    stops after the step the signal arrived in (:class:`reweigh.callbacks.Preemption`)."""


@dataclass
class TrainConfig:
    run_name: str = not_arm(default=MISSING)
    run_dir: Optional[str] = not_arm(default=None)
    """Local folder for this run's outputs; default ``runs/{run_name}``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train_loader: LoaderConfig = field(default_factory=LoaderConfig)
    eval_loader: Optional[LoaderConfig] = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig)
    mixing: Optional[MixingConfig] = None
    """Present: the training stream's domain proportions change online (:mod:`reweigh.pipeline.mixing`)."""
    history: HistoryConfig = field(default_factory=HistoryConfig)
    callbacks: dict[str, Any] = not_arm(default_factory=dict)
    loggers: dict[str, Any] = not_arm(default_factory=dict)
    """Composer logger destinations by name (``file``, ``in_memory``, ``tensorboard``, ``mlflow``, ``wandb``) and their
    arguments; ``{run_dir}`` in the file logger's ``filename`` is the run folder."""
    max_duration: str = MISSING
    eval_interval: str = '1ep'
    global_train_batch_size: int = MISSING
    device_train_microbatch_size: Any = not_arm(default=None)
    """An int, ``'auto'``, or unset (the per-device batch)."""
    precision: str = 'fp32'
    device: str = not_arm(default='auto')
    save_folder: Optional[str] = not_arm(default=None)
    """Local path or object-store URI; default ``{run_dir}/checkpoints``."""
    save_interval: str = not_arm(default='1ep')
    object_store_outage_s: float = not_arm(default=600.0)
    """With a remote ``save_folder``: how long uploads keep retrying while the store is unreachable
    before the run stops with an error (it then resumes from what is in the bucket)."""
    save_num_checkpoints_to_keep: int = not_arm(default=-1)
    autoresume: bool = not_arm(default=False)
    load_path: Optional[str] = not_arm(default=None)
    """A checkpoint to start from (local path or object-store URI); an autoresume checkpoint takes precedence."""
    load_weights_only: bool = False
    """With ``load_path``: take the model weights only, not the optimizer, schedule, dataloader or RNG state."""
    seed: int = not_arm(default=17)
    progress_bar: Optional[bool] = not_arm(default=None)
    """A progress bar; unset: a bar when stderr is a terminal, else a log line every ``console_log_interval``."""
    console_log_interval: str = not_arm(default='10ba')
    fsdp_config: Optional[dict[str, Any]] = None
    dist_timeout: float = not_arm(default=300.0)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)
    """One launch at a time trains a run folder (:mod:`reweigh.train.lease`)."""


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass an annotation (``X`` or ``Optional[X]``) names, else None."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def not_arm_keys(cls: type = TrainConfig, prefix: str = '') -> tuple[str, ...]:
    """The dotted config keys declared with :func:`not_arm`: they do not make two runs different arms.

    A key stands for itself and everything under it (``loggers`` covers ``loggers.file.filename``).

    Args:
        cls: The config dataclass to walk (nested dataclasses are walked too).
        prefix: Prepended to every key (``'train_loader.'`` for a nested section).

    Returns:
        tuple[str, ...]: The keys, in declaration order.

    Example:
        >>> from reweigh.train.schema import HistoryConfig, not_arm_keys
        >>> not_arm_keys(HistoryConfig, 'history.')
        ('history.folder', 'history.flush_interval')
        >>> [k for k in not_arm_keys() if k.startswith('train_loader.')]
        ['train_loader.dataset.shuffle_seed', 'train_loader.num_workers']
    """
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        nested = _dataclass_of(hints[f.name])
        if f.metadata.get('arm', True) is False:
            keys.append(prefix + f.name)
        elif nested is not None:
            keys += not_arm_keys(nested, f'{prefix}{f.name}.')
    return tuple(keys)
