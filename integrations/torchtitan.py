"""Loss-based sample reweighting in torchtitan: a ``Trainer`` whose loss is reweighted, configured as torchtitan is.

torchtitan (tested with 0.3.0) builds a run from the ``Trainer.Config`` that a ``config_registry`` function returns
(``--module ... --config ...``), and ``config.build()`` constructs the ``Trainer`` the config belongs to.
:class:`ReweighTrainer` is that ``Trainer`` holding one :class:`~reweigh.algorithms.Reweighter`; its
:class:`ReweighTrainer.Config` is ``Trainer.Config`` with a ``reweighting`` section (:class:`ReweightingConfig`, on the
command line ``--reweighting.strategy``, ``--reweighting.warmup``, ...), and :func:`with_reweighting` turns a
registered config (``llama3_debugmodel()``, your own) into one. torchtitan's ``train_step`` runs unchanged (gradient
accumulation, the data-parallel token count, clipping, the optimizer, checkpointing, its metrics); the adapter only
takes the data loader's ids out of the model's inputs, wraps the loss, and hooks the history to the trainer's steps
and checkpoints. It needs ``torchtitan``.

Example:
    >>> from torchtitan.models.llama3.config_registry import llama3_debugmodel
    >>> from reweigh.integrations.torchtitan import ReweighTrainer, ReweightingConfig, with_reweighting
    >>> config = llama3_debugmodel()
    >>> reweighted = with_reweighting(config, ReweightingConfig(warmup=100, history_folder='outputs/history'))
    >>> type(reweighted).__qualname__, type(reweighted.loss).__qualname__, reweighted.training.disable_cuda_graphs
    ('ReweighTrainer.Config', 'CrossEntropyLoss.Config', True)
    >>> reweighted.reweighting.reweighter().settings()['warmup']
    '100ba'
    >>> config.parallelism.tensor_parallel_degree = 2
    >>> with_reweighting(config)
    Traceback (most recent call last):
    ...
    ValueError: ReweighTrainer weighs each microbatch over all ranks, which is the data-parallel batch only without ...
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import torchtitan  # noqa: F401  (first of its stack: without reweigh[torchtitan] the error names torchtitan)
import tyro
from torch.nn import functional as F
from torchtitan.components.loss import IGNORE_INDEX, BaseLoss, ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.config import TrainingConfig
from torchtitan.tools.logging import logger
from torchtitan.trainer import Trainer

from reweigh.algorithms.constants import (
    DEFAULT_DELTA,
    DEFAULT_R,
    DEFAULT_STRATEGY,
    DEFAULT_TOKEN_NORMALIZE,
    DEFAULT_WARMUP_STEPS,
)
from reweigh.algorithms.gather import world_size
from reweigh.algorithms.losses import PerSampleLoss, per_sample_mean
from reweigh.algorithms.reweighter import Progress, Reweighter
from reweigh.history.format import encode_metadata
from reweigh.history.recorder import HistoryRecorder, dataset_domain_names

__all__ = ['ID_KEYS', 'REWEIGHTER_KEY', 'ReweighTrainer', 'ReweightingConfig', 'with_reweighting']

ID_KEYS = ('sample_id', 'domain')
"""Keys of the data loader's input dict that go to the loss and the history, never to the model: ``(batch,)`` integer
tensors, beside ``input`` (and ``positions``)."""

REWEIGHTER_KEY = 'reweighting'
"""Where the :class:`~reweigh.algorithms.Reweighter`'s state sits in the trainer's checkpointed ``train_state``."""


@dataclass(kw_only=True, slots=True)
class ReweightingConfig:
    """The ``reweighting`` section of :class:`ReweighTrainer.Config`: the method's settings and the history folder."""

    strategy: str = DEFAULT_STRATEGY
    """A registered strategy: ``uniform``, ``linupper`` (the paper's best), ``quadratic``, ``extremes``, ``upper``."""
    r: float = DEFAULT_R
    """Softmax temperature, ``> 0``; large values tend to uniform."""
    delta: float = DEFAULT_DELTA
    """Half-width of the loss normalisation interval, ``> 0``."""
    warmup: int | str = DEFAULT_WARMUP_STEPS
    """Plain training before reweighting starts: optimizer steps, or ``'1000ba'``, ``'100000sp'``, ``'1000000tok'``,
    ``'0.05dur'`` (of ``training.steps``)."""
    token_normalize: bool = DEFAULT_TOKEN_NORMALIZE
    """Fold token counts into the weights, so that uniform weights give the token-mean loss."""
    fused: bool | Literal['auto'] = 'auto'
    """Compile the step after the all-gather into one region: ``'auto'`` (on CUDA), ``True`` or ``False``."""
    history_folder: str | None = None
    """Write every training sample's loss and weight per step there (one ``rank{N}`` folder per process, the format of
    :mod:`reweigh.history`); ``None``: no history."""
    r_schedule: Annotated[Callable[[int], float] | None, tyro.conf.Suppress] = None
    """Multiplier on ``r`` as a function of the optimizer steps done (set in Python, not on the command line)."""

    def reweighter(self) -> Reweighter:
        """A :class:`~reweigh.algorithms.Reweighter` with these settings.

        Raises:
            ValueError: For an unknown strategy, non-positive ``r`` or ``delta``, a bad ``warmup`` or a non-callable
                ``r_schedule``.
        """
        return Reweighter(self.strategy, self.r, self.delta, self.warmup, self.r_schedule, self.token_normalize,
                         self.fused)

    def to_dict(self) -> dict[str, Any]:
        """The section as torchtitan's config dumps and metric loggers record it (``r_schedule`` by its ``repr``)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values['r_schedule'] = None if self.r_schedule is None else repr(self.r_schedule)
        return values


class ReweighTrainer(Trainer):
    """A torchtitan ``Trainer`` with dynamic loss-based sample reweighting (Sow et al., ICLR 2025).

    Built by ``config.build()`` from a :class:`ReweighTrainer.Config` (or run by ``torchtitan.train`` from a
    ``config_registry`` function returning one). For each microbatch:

    * ``sample_id`` and ``domain`` (:data:`ID_KEYS`) are taken out of the data loader's input dict before the
      forward (in ``post_dataloading_process``), so the model never sees them; the loss and the history do.
    * Reweighting: the per-sample losses (mean cross-entropy over each sequence's labels other than
      ``IGNORE_INDEX``, labels next-token aligned as torchtitan's loaders yield them) are computed once from the
      logits, gathered over the data-parallel ranks, and turned into weights summing to 1 over the global microbatch.
      torchtitan sums gradients over its data-parallel ranks (it turns FSDP's division off and divides by the global
      token count itself), so this rank backpropagates ``sum_i w_i l_i / grad_accumulation_steps`` over its own
      samples: the update of a step is the mean over its microbatches of ``sum_i w_i grad(l_i)`` over the global
      microbatch, and the logged ``loss`` is that weighted loss. The weights are constants in the backward.
    * Warm-up (the first ``reweighting.warmup``) and ``strategy='uniform'``: the loss is torchtitan's own, unchanged
      (the token mean over the global batch), and the per-sample losses are computed on the side, without gradient,
      for the metrics and the history.
    * Logged at torchtitan's log steps through its metric loggers (and one console line), averaged over the
      microbatches since the previous log: ``loss_reweighting/`` ``weight_entropy``, ``ess``, ``weight_min``,
      ``weight_max``, ``nonfinite_losses``, ``mean_loss``, ``r`` and ``active``.
    * History (with ``reweighting.history_folder``): rows at reweigh's step (optimizer steps done before the step:
      torchtitan's ``step`` minus 1) and microbatch, with the ids and domains; written at each log step, completely
      before every checkpoint, and when ``train()`` ends or fails. A run resumed from a checkpoint of step ``N`` first
      drops the rows an interrupted attempt wrote at or past ``N``, so the history has no duplicates. The
      reweighter's state is saved in ``train_state`` (:data:`REWEIGHTER_KEY`), so only a checkpoint of a
      ``ReweighTrainer`` resumes one (a plain torchtitan checkpoint can seed the model: ``checkpoint.initial_load_path``).
    * Validation is untouched (torchtitan's loss, its own data loader).

    Supported: data parallelism (FSDP, HSDP, DDP), with the plain ``CrossEntropyLoss``, under the ``spmd_types``
    (default) or ``partial_dtensor`` backend; expert parallelism is not refused (it splits the experts, not the
    batch). :class:`ReweighTrainer.Config` refuses tensor, context and pipeline parallelism (reweigh's gather
    normalises over all ranks, which is then more than the data-parallel batch), the ``full_dtensor`` backend (its
    logits and labels are DTensors), ``ChunkedLossWrapper`` (it backpropagates chunk by chunk inside the loss, before
    a sequence's loss and so its weight is known) and CUDA graphs (a replayed graph would skip the step's Python
    side: the warm-up switch, the history, the metrics).

    Args:
        config (ReweighTrainer.Config): torchtitan's ``Trainer.Config`` with the ``reweighting`` section.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        """``Trainer.Config`` with the ``reweighting`` section, the plain ``CrossEntropyLoss`` and CUDA graphs off by
        default.

        Raises:
            ValueError: For tensor, context or pipeline parallelism, the ``full_dtensor`` backend, a loss other than
                ``CrossEntropyLoss``, CUDA graphs, or invalid reweighting settings.
        """

        loss: BaseLoss.Config = field(default_factory=CrossEntropyLoss.Config)
        training: TrainingConfig = field(default_factory=lambda: TrainingConfig(disable_cuda_graphs=True))
        reweighting: ReweightingConfig = field(default_factory=ReweightingConfig)

        def __post_init__(self) -> None:
            Trainer.Config.__post_init__(self)
            self.reweighting.reweighter()
            parallelism = self.parallelism
            others = {name: degree for name, degree in (('tensor', parallelism.tensor_parallel_degree),
                                                        ('context', parallelism.context_parallel_degree),
                                                        ('pipeline', parallelism.pipeline_parallel_degree)) if degree != 1}
            if others:
                raise ValueError(
                    'ReweighTrainer weighs each microbatch over all ranks, which is the data-parallel batch only without '
                    'tensor, context and pipeline parallelism; got ' +
                    ', '.join(f'{name} parallel degree {degree}' for name, degree in others.items()) + '.',
                )
            if parallelism.spmd_backend == 'full_dtensor':
                raise ValueError('ReweighTrainer computes per-sample losses from local logits and labels; the '
                                 'full_dtensor backend (inputs, logits and labels as DTensors) is not supported: use '
                                 'spmd_types or partial_dtensor.')
            if not isinstance(self.loss, CrossEntropyLoss.Config):
                hint = (' (ChunkedLossWrapper backpropagates chunk by chunk, before the loss of a sequence is known: use '
                        'its loss_fn, or with_reweighting(config))' if isinstance(self.loss, ChunkedLossWrapper.Config) else '')
                raise ValueError(f'ReweighTrainer reweights the per-sample cross-entropy and needs loss=CrossEntropyLoss.'
                                 f'Config(), got {type(self.loss).__qualname__}{hint}.')
            if not self.training.disable_cuda_graphs:
                raise ValueError('ReweighTrainer needs training.disable_cuda_graphs=True: a replayed CUDA graph skips the '
                                 'Python side of the step (the warm-up switch, the history, the metrics).')

    config: Config

    def __init__(self, config: Config) -> None:
        self.reweighter = config.reweighting.reweighter()
        """The framework-free core this trainer drives (settings, step, metrics)."""
        self._ids: dict[str, torch.Tensor | None] = {}
        self._history: HistoryRecorder | None = None
        super().__init__(config)
        self.plain_loss_fn = self.loss_fn
        """torchtitan's loss, as built from ``config.loss`` (used during warm-up, and by validation)."""
        self.loss_fn = self._loss

    @property
    def data_parallel_degree(self) -> int:
        """Ranks that share a global batch (``dp_replicate * dp_shard``)."""
        return self.parallel_dims.dp_replicate * self.parallel_dims.dp_shard

    def progress(self) -> Progress:
        """Where training is during the current step, as reweigh counts it: optimizer steps done before it (torchtitan's
        ``step`` minus 1), and the samples, tokens and share of ``training.steps`` they make."""
        done = self.step - 1
        samples = done * self.gradient_accumulation_steps * self.config.training.local_batch_size * self.data_parallel_degree
        return Progress(done, samples=samples, tokens=samples * self.config.training.seq_len,
                        fraction=done / self.config.training.steps, clock=done)

    def post_dataloading_process(
        self, input_dict: dict[str, torch.Tensor], labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """torchtitan's, after taking ``sample_id`` and ``domain`` out of the batch (for the loss and the history)."""
        self._ids = {key: input_dict.get(key) for key in ID_KEYS}
        inputs = {key: value for key, value in input_dict.items() if key not in ID_KEYS}
        return super().post_dataloading_process(inputs, labels)

    def _loss(self, pred: torch.Tensor, labels: torch.Tensor, global_valid_tokens: torch.Tensor | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The microbatch's loss in place of ``loss_fn`` (same signature and result: the scaled loss and metrics)."""
        progress = self.progress()
        if self.reweighter.is_active(progress):
            per_sample = _per_sample_loss(pred, labels)
        else:
            loss, metrics = self.plain_loss_fn(pred, labels, global_valid_tokens, **kwargs)
            with torch.no_grad():
                per_sample = _per_sample_loss(pred.detach(), labels)
        out = self.reweighter.step(per_sample.loss, per_sample.tokens, progress,
                                   capacity=self.config.training.local_batch_size,
                                   sample_id=self._ids.get('sample_id'), domain=self._ids.get('domain'))
        if out.loss is not None:  # world_size * sum_i w_i l_i, for gradients averaged over the ranks: torchtitan sums
            loss, metrics = out.loss / (world_size() * self.gradient_accumulation_steps), {}
        if self.config.reweighting.history_folder is not None:
            if self._history is None:
                self._history = self._open_history(progress.step)
            self._history.record(progress.step, out.record)
        return loss, metrics

    def _open_history(self, resume_step: int) -> HistoryRecorder:
        metadata = encode_metadata(self.reweighter.settings(), run_name=Path(self.config.dump_folder).name,
                                   world_size=self.data_parallel_degree,
                                   domains=dataset_domain_names(getattr(self.dataloader, 'dataset', None)))
        rank = dist.get_rank() if dist.is_initialized() else 0
        return HistoryRecorder(self.config.reweighting.history_folder, rank, metadata, resume_step)

    def train_step(self, data_iterator: Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> None:
        """torchtitan's step; at its log steps, also the reweighting metrics since the previous log, and the history's
        pending rows."""
        super().train_step(data_iterator)
        if not self.metrics_processor.should_log(self.step):
            return
        report = self.reweighter.report()
        if report is not None:
            tensors, scalars = report
            metrics = dict(zip(tensors.names, tensors.vector.tolist()))  # one device read per log
            metrics.update(scalars)
            self.metrics_processor.logger.log(metrics, self.step)
            logger.info(f'step: {self.step:2}  ' + '  '.join(f'{k}: {v:.4g}' for k, v in metrics.items()))
        if self._history is not None:
            self._history.flush(wait=False)

    def train(self) -> None:
        """torchtitan's ``train``, writing the rest of the history when training ends or fails."""
        try:
            super().train()
        finally:
            if self._history is not None:
                self._history.close()
                self._history = None

    def state_dict(self) -> dict[str, Any]:
        """torchtitan's ``train_state`` and the reweighter's; before a checkpoint, the history is written up to it."""
        if self._history is not None:
            self._history.flush(wait=True)
        return {**super().state_dict(), REWEIGHTER_KEY: self.reweighter.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore torchtitan's ``train_state`` and the reweighter's (new settings win, with a warning)."""
        super().load_state_dict(state_dict)
        self.reweighter.load_state_dict(state_dict[REWEIGHTER_KEY], owner='ReweighTrainer')


def with_reweighting(config: Trainer.Config, reweighting: ReweightingConfig | None = None) -> ReweighTrainer.Config:
    """A registered ``Trainer.Config`` (e.g. ``llama3_debugmodel()``) as a :class:`ReweighTrainer.Config`.

    Every section is kept, except that a ``ChunkedLossWrapper`` is replaced by its inner loss (the logits of a whole
    microbatch are materialised, as without chunking) and CUDA graphs are turned off. Return it from your
    ``config_registry`` function and run ``torchtitan.train --module <yours> --config <it>``.

    Args:
        config (Trainer.Config): torchtitan's config (or a :class:`ReweighTrainer.Config`, whose section is replaced).
        reweighting (ReweightingConfig, optional): The method's settings. Default: :class:`ReweightingConfig`'s.

    Returns:
        ReweighTrainer.Config: the same run, reweighted.

    Raises:
        TypeError: For the config of another ``Trainer`` subclass (its own fields would be lost).
        ValueError: Where :class:`ReweighTrainer.Config` refuses the result.
    """
    if type(config) not in (Trainer.Config, ReweighTrainer.Config):
        raise TypeError(f'with_reweighting takes a torchtitan Trainer.Config, got {type(config).__qualname__}; '
                        f'subclass ReweighTrainer for a Trainer of your own.')
    values = {f.name: getattr(config, f.name) for f in fields(Trainer.Config) if f.init}
    values = copy.deepcopy(values)  # the result shares no section with ``config``
    if isinstance(values['loss'], ChunkedLossWrapper.Config):
        values['loss'] = values['loss'].loss_fn
    values['training'] = replace(values['training'], disable_cuda_graphs=True)
    return ReweighTrainer.Config(**values, reweighting=reweighting or ReweightingConfig())


def _per_sample_loss(pred: torch.Tensor, labels: torch.Tensor) -> PerSampleLoss:
    """Mean cross-entropy of each sequence from ``(batch, seq, vocab)`` logits and next-token aligned labels."""
    token_loss = F.cross_entropy(pred.flatten(0, 1).float(), labels.flatten(), reduction='none',
                                 ignore_index=IGNORE_INDEX).view_as(labels)
    return per_sample_mean(token_loss, labels, IGNORE_INDEX)
