"""Turn a validated :class:`~reweigh.train.schema.TrainConfig` into Composer objects.

Example:
    >>> from omegaconf import OmegaConf
    >>> from reweigh.train.builders import build_algorithms, build_scheduler
    >>> from reweigh.train.schema import TrainConfig
    >>> cfg = OmegaConf.structured(TrainConfig)
    >>> type(build_scheduler(cfg)).__name__, build_algorithms(cfg)
    ('CosineAnnealingWithWarmupScheduler', [])
"""

from __future__ import annotations

from typing import Any

import torch
from composer.callbacks import LRMonitor, MemoryMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import Algorithm, Callback
from composer.loggers import FileLogger, InMemoryLogger, LoggerDestination
from composer.optim import (
    ConstantScheduler,
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    DecoupledSGDW,
    LinearScheduler,
    LinearWithWarmupScheduler,
)
from omegaconf import OmegaConf

from reweigh.algorithms import LossReweighting
from reweigh.models import ReweighCausalLM, build_causal_lm
from reweigh.train.config import ConfigError

__all__ = ['build_algorithms', 'build_callbacks', 'build_loggers', 'build_model', 'build_optimizer', 'build_scheduler']


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}  # type: ignore[return-value]


def build_model(cfg: Any, vocab_size: int, tokenizer: Any = None) -> ReweighCausalLM:
    """The configured GPT-2/Llama model, randomly initialised, with ``vocab_size`` unless the config sets one."""
    config = _plain(cfg.model.config)
    config.setdefault('vocab_size', vocab_size)
    if config['vocab_size'] < vocab_size:
        raise ConfigError(
            f"config key 'model.config.vocab_size': {config['vocab_size']} is smaller than the tokenizer's "
            f'vocabulary ({vocab_size}).',
        )
    if tokenizer is not None:
        for key in ('eos_token_id', 'bos_token_id', 'pad_token_id'):
            value = getattr(tokenizer, key, None)
            if value is not None:
                config.setdefault(key, value)
    try:
        return build_causal_lm(
            cfg.model.family, tokenizer=tokenizer, loss_impl=cfg.model.loss_impl, chunk_size=cfg.model.chunk_size, **config,
        )
    except ValueError as e:
        raise ConfigError(f"config key 'model.config': {e}") from e


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over ``model``'s parameters."""
    o = cfg.optimizer
    params = model.parameters()
    if o.name == 'decoupled_adamw':
        return DecoupledAdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.name == 'adamw':
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.name == 'decoupled_sgdw':
        return DecoupledSGDW(params, lr=o.lr, momentum=o.betas[0], weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.betas[0], weight_decay=o.weight_decay)


def build_scheduler(cfg: Any):
    """The configured Composer learning-rate scheduler."""
    s = cfg.scheduler
    if s.name == 'cosine_with_warmup':
        return CosineAnnealingWithWarmupScheduler(t_warmup=s.t_warmup, alpha_f=s.alpha_f)
    if s.name == 'linear_with_warmup':
        return LinearWithWarmupScheduler(t_warmup=s.t_warmup, alpha_f=s.alpha_f)
    if s.name == 'constant_with_warmup':
        return ConstantWithWarmupScheduler(t_warmup=s.t_warmup)
    return ConstantScheduler()


def build_algorithms(cfg: Any) -> list[Algorithm]:
    """``[LossReweighting(...)]`` when ``algorithms.loss_reweighting`` is set, else ``[]`` (the baseline)."""
    lr_cfg = cfg.algorithms.loss_reweighting
    if lr_cfg is None:
        return []
    schedule = None
    if lr_cfg.r_schedule is not None:
        rs = lr_cfg.r_schedule
        if rs.name == 'linear':
            schedule = LinearScheduler(alpha_i=rs.alpha_i, alpha_f=rs.alpha_f, t_max=rs.t_max)
        else:
            schedule = ConstantScheduler(alpha=rs.alpha_i)
    return [
        LossReweighting(
            strategy=lr_cfg.strategy,
            r=lr_cfg.r,
            delta=lr_cfg.delta,
            warmup=lr_cfg.warmup,
            r_schedule=schedule,
            token_normalize=lr_cfg.token_normalize,
            fused=lr_cfg.fused,
        ),
    ]


_CALLBACKS = {
    'speed_monitor': SpeedMonitor,
    'lr_monitor': LRMonitor,
    'memory_monitor': MemoryMonitor,
    'runtime_estimator': RuntimeEstimator,
}


def build_callbacks(cfg: Any) -> list[Callback]:
    """Composer callbacks named under ``callbacks:`` (validated names), built with their mapping as kwargs."""
    out = []
    for name, kwargs in cfg.callbacks.items():
        try:
            out.append(_CALLBACKS[name](**_plain(kwargs)))
        except TypeError as e:
            raise ConfigError(f"config key 'callbacks.{name}': {e}") from e
    return out


def build_loggers(cfg: Any, run_dir: str) -> list[LoggerDestination]:
    """Composer logger destinations named under ``loggers:``; optional ones fail clearly if not installed.

    ``{run_dir}`` in the file logger's ``filename`` is the run folder ``run_dir`` (so the log moves with the run).
    """
    out: list[LoggerDestination] = []
    for name, kwargs in cfg.loggers.items():
        kwargs = _plain(kwargs)
        try:
            if name == 'file':
                if isinstance(kwargs.get('filename'), str):
                    kwargs['filename'] = kwargs['filename'].replace('{run_dir}', str(run_dir))
                out.append(FileLogger(**kwargs))
            elif name == 'in_memory':
                out.append(InMemoryLogger(**kwargs))
            elif name == 'tensorboard':
                from composer.loggers import TensorboardLogger
                out.append(TensorboardLogger(**kwargs))
            elif name == 'mlflow':
                from composer.loggers import MLFlowLogger
                out.append(MLFlowLogger(**kwargs))
            elif name == 'wandb':
                from composer.loggers import WandBLogger
                out.append(WandBLogger(**kwargs))
        except TypeError as e:
            raise ConfigError(f"config key 'loggers.{name}': {e}") from e
        except ImportError as e:
            raise ConfigError(f"config key 'loggers.{name}': the logger's package is not installed ({e}).") from e
    return out
