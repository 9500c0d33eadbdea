"""Loss-based sample reweighting in OLMo-core: a ``TransformerTrainModule`` and a history ``Callback``.

:class:`ReweighTrainModule` is OLMo-core's ``TransformerTrainModule`` (built from :class:`ReweighTrainModuleConfig`,
a ``TransformerTrainModuleConfig`` with the method's settings) whose training loss is reweighted by one
:class:`~reweigh.algorithms.Reweighter`: OLMo-core's own ``train_batch`` (labels, masks, micro-batches, gradient
sync, its metrics) runs unchanged, and only the forward pass of each micro-batch asks the LM head for its
per-token losses (``loss_reduction='none'``). :class:`LossHistoryCallback` writes every training sample's loss and
weight per step in the format of :mod:`reweigh.history`, named by the data loader's instance ``index`` and the
``domain`` in its source's ``metadata``. It needs ``ai2-olmo-core`` (tested with 3.0).

Example:
    >>> import tempfile, numpy as np, torch
    >>> from olmo_core.data import DataCollator, NumpyDataLoaderBase, NumpyFSLDataset
    >>> from olmo_core.nn.transformer import TransformerConfig
    >>> from olmo_core.optim import AdamWConfig
    >>> from olmo_core.train import Duration, TrainerConfig
    >>> from reweigh.analysis import load_history
    >>> from reweigh.integrations.olmo_core import LossHistoryCallback, ReweighTrainModuleConfig
    >>> root = tempfile.mkdtemp()
    >>> for i, name in enumerate(['code', 'web']):
    ...     np.random.default_rng(i).integers(1, 64, 16 * 8, dtype=np.uint16).tofile(f'{root}/{name}.npy')
    >>> dataset = NumpyFSLDataset(f'{root}/code.npy', f'{root}/web.npy', sequence_length=16, pad_token_id=0,
    ...                           eos_token_id=0, vocab_size=64, metadata=[{'domain': 'code'}, {'domain': 'web'}])
    >>> loader = NumpyDataLoaderBase.wrap_numpy_dataset(dataset, global_batch_size=4 * 16, work_dir=f'{root}/work',
    ...                                                 collator=DataCollator(pad_token_id=0))
    >>> _ = torch.manual_seed(0)
    >>> model = TransformerConfig.llama_like(d_model=32, vocab_size=64, n_layers=1, n_heads=2,
    ...                                      hidden_size_multiple_of=16).build()
    >>> train_module = ReweighTrainModuleConfig(
    ...     rank_microbatch_size=4 * 16, max_sequence_length=16, optim=AdamWConfig(lr=1e-3),
    ...     strategy='linupper', warmup=1, domains=['code', 'web'],
    ... ).build(model)
    >>> trainer = TrainerConfig(save_folder=f'{root}/run', max_duration=Duration.steps(2), no_checkpoints=True).build(
    ...     train_module, loader)
    >>> trainer.add_callback('loss_history', LossHistoryCallback(folder=f'{root}/history'))
    >>> trainer.fit()
    >>> history = load_history(f'{root}/history').sort_by('step').to_pydict()
    >>> history['step'], history['active'], sorted(set(history['domain']))
    ([0, 0, 0, 0, 1, 1, 1, 1], [False, False, False, False, True, True, True, True], [0, 1])
    >>> round(sum(history['weight'][4:]), 4)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from olmo_core.distributed.utils import get_rank, get_world_size
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.lm_head import LMOutputWithLoss
from olmo_core.nn.transformer import Transformer
from olmo_core.optim import OptimConfig
from olmo_core.train.callbacks import Callback
from olmo_core.train.train_module import TransformerTrainModule, TransformerTrainModuleConfig
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.state_dict import StateDictOptions

from reweigh.algorithms.constants import (
    DEFAULT_DELTA,
    DEFAULT_R,
    DEFAULT_STRATEGY,
    DEFAULT_TOKEN_NORMALIZE,
    DEFAULT_WARMUP_STEPS,
)
from reweigh.algorithms.losses import per_sample_mean
from reweigh.algorithms.reweighter import Progress, Reweighter
from reweigh.algorithms.step import MicrobatchWeights
from reweigh.history.format import encode_metadata
from reweigh.history.recorder import HistoryRecorder

__all__ = ['REWEIGHTER_KEY', 'LossHistoryCallback', 'ReweighTrainModule', 'ReweighTrainModuleConfig']

REWEIGHTER_KEY = 'reweighter'
"""Where the :class:`~reweigh.algorithms.Reweighter`'s state sits in the train module's checkpoint state."""


class _Batch(NamedTuple):
    """What the micro-batches of one ``train_batch`` share."""
    progress: Progress | None  # None: OLMo-core's dry run, which is neither weighed nor recorded
    microbatches: int
    capacity: int


class ReweighTrainModule(TransformerTrainModule):
    """OLMo-core's ``TransformerTrainModule`` with dynamic loss-based sample reweighting (Sow et al., ICLR 2025).

    For each micro-batch the LM head returns its per-token losses (``loss_reduction='none'``, with the z-loss when
    ``z_loss_multiplier`` is set); their mean over each instance's target tokens is its loss. The losses are
    gathered over the data-parallel ranks, turned into weights summing to 1 over the global micro-batch, and each
    rank backpropagates ``world_size * sum_i w_i l_i / M`` over its own instances (``M`` micro-batches per batch),
    so that after the data-parallel gradient averaging the update is the mean over the micro-batches of
    ``sum_i w_i grad(l_i)``. The weights are constants in the backward pass.

    * Warm-up and ``strategy='uniform'``: the loss is OLMo-core's own (the sum of the token losses divided by the
      batch's target tokens); the per-sample losses are recorded, nothing is reweighted.
    * OLMo-core's ``train/CE loss`` stays the plain token-mean cross-entropy. The ``loss_reweighting/*``
      statistics of each step (``weight_entropy``, ``ess``, ``weight_min``, ``weight_max``, ``nonfinite_losses``,
      ``mean_loss``, ``r``, ``active``) are recorded with ``record_metric``; they are global, so not reduced.
    * :attr:`records` holds what each micro-batch of the latest batch used, with the instances' ids (the data
      loader's ``index``) and domains (``metadata[domain_key]``, an index or one of ``domains``; ``-1`` where a
      source has none); :class:`LossHistoryCallback` writes them. An instance without target tokens (one that
      OLMo-core's instance filter masks) has loss 0 and 0 tokens, as everywhere in reweigh.
    * The :class:`~reweigh.algorithms.Reweighter`'s state is saved with the model and optimizer
      (:data:`REWEIGHTER_KEY`); a checkpoint without it (a plain OLMo-core one) loads too.
    * Progress: ``step`` is ``trainer.global_step - 1`` (steps completed before this one), ``tokens`` the global
      tokens before this batch, ``epoch`` the epochs completed and ``fraction`` ``step / max_steps``; a warm-up in
      samples (``'sp'``) is not available. ``r_schedule`` is called with that :class:`~reweigh.algorithms.Progress`.
    * Data parallelism: DDP, FSDP and HSDP (also with expert parallelism, which OLMo-core runs inside HSDP): the
      data-parallel group is then the whole world, which the core gathers over. Tensor and context parallelism
      (which split an instance's tokens over ranks and shrink that group) are rejected; pipeline parallelism has
      its own train module.

    Args:
        model (Transformer): OLMo-core's transformer.
        optim (OptimConfig): Its optimizer's config.
        rank_microbatch_size (int): Tokens per rank and micro-batch (``TransformerTrainModule``'s).
        max_sequence_length (int): The longest training sequence.
        strategy (str): A registered strategy (``'uniform'``, ``'linupper'``, ``'quadratic'``, ``'extremes'``,
            ``'upper'``, ...). Default: ``'linupper'``.
        r (float): Softmax temperature, ``> 0``. Default: ``1.0``.
        delta (float): Half-width of the loss normalisation interval, ``> 0``. Default: ``1.0``.
        warmup (str | int): Plain training before reweighting starts: optimizer steps, or ``'1000ba'``,
            ``'1000000tok'``, ``'1ep'``, ``'0.05dur'``. Default: ``1000`` steps.
        r_schedule (Callable, optional): Multiplier on ``r``, called with the step's ``Progress``.
        token_normalize (bool): Fold token counts into the weights. Default: ``False`` (sample-mean).
        fused (bool | str): Compile the step after the all-gather into one region (:mod:`reweigh.algorithms.fused`):
            ``True``, ``False``, or ``'auto'`` (on CUDA). Default: ``'auto'``.
        domain_key (str): The key of an instance's ``metadata`` that names its domain. Default: ``'domain'``.
        domains (list[str], optional): Domain names by index, for names in the metadata and the history's metadata.
        **kwargs: Keyword arguments of ``TransformerTrainModule``.

    Raises:
        ValueError: For an unknown strategy, non-positive ``r`` or ``delta``, or a bad ``warmup``; in training, for an
            instance whose metadata names a domain that is not in ``domains``.
        OLMoConfigurationError: With ``tp_config`` or ``cp_config``.

    Example:
        >>> from olmo_core.nn.transformer import TransformerConfig
        >>> from olmo_core.optim import AdamWConfig
        >>> from reweigh.integrations.olmo_core import ReweighTrainModule
        >>> model = TransformerConfig.llama_like(d_model=32, vocab_size=64, n_layers=1, n_heads=2,
        ...                                      hidden_size_multiple_of=16).build()
        >>> module = ReweighTrainModule(model, AdamWConfig(lr=1e-3), 64, 16, strategy='quadratic', warmup='0.1dur')
        >>> module.reweighter.settings()
        {'strategy': 'quadratic', 'r': 1.0, 'delta': 1.0, 'warmup': '0.1dur', 'token_normalize': False}
    """

    def __init__(
        self,
        model: Transformer,
        optim: OptimConfig,
        rank_microbatch_size: int,
        max_sequence_length: int,
        *,
        strategy: str = DEFAULT_STRATEGY,
        r: float = DEFAULT_R,
        delta: float = DEFAULT_DELTA,
        warmup: str | int = DEFAULT_WARMUP_STEPS,
        r_schedule: Callable[[Progress], float] | None = None,
        token_normalize: bool = DEFAULT_TOKEN_NORMALIZE,
        fused: bool | Literal['auto'] = 'auto',
        domain_key: str = 'domain',
        domains: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.reweighter = Reweighter(strategy, r, delta, warmup, r_schedule, token_normalize, fused)
        """The framework-free core this module drives (settings, step, metrics)."""
        split = [name for name in ('tp_config', 'cp_config') if kwargs.get(name) is not None]
        if split:  # the data-parallel group would be smaller than the default process group the core gathers over
            raise OLMoConfigurationError(
                f'ReweighTrainModule weighs whole instances over all ranks; {" and ".join(split)} (tensor or context '
                'parallelism) split them over ranks and are not supported.',
            )
        super().__init__(model, optim, rank_microbatch_size, max_sequence_length, **kwargs)
        self.domain_key = domain_key
        self.domains = None if domains is None else [str(name) for name in domains]
        """Domain names by index (or ``None``)."""
        self.records: list[MicrobatchWeights] = []
        """What each micro-batch of the latest training batch used (losses, weights, ids, domains), in order."""
        self._batch: _Batch | None = None

    def train_batch(self, batch: dict[str, Any], dry_run: bool = False) -> None:
        """OLMo-core's ``train_batch``, with each micro-batch's loss reweighted, then the step's statistics recorded."""
        self.records = []
        instances, seq_len = batch['input_ids'].shape
        per_microbatch = max(1, self.rank_microbatch_size // seq_len)  # too small: OLMo-core raises
        self._batch = _Batch(None if dry_run else self._progress(batch), math.ceil(instances / per_microbatch),
                             per_microbatch)
        try:
            super().train_batch(batch, dry_run)
        finally:
            self._batch = None
        report = None if dry_run else self.reweighter.report()
        if report is not None:
            tensors, scalars = report
            for name, value in {**tensors, **scalars}.items():
                self.record_metric(name, value, reduce_type=None)

    def model_forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                      **kwargs: Any) -> torch.Tensor | LMOutputWithLoss:
        """The forward pass; in training, the reweighted loss of one micro-batch as ``LMOutputWithLoss``."""
        sample_id, metadata = kwargs.pop('index', None), kwargs.pop('metadata', None)
        batch = self._batch
        if batch is None or labels is None:  # evaluation and generation are untouched
            return super().model_forward(input_ids, labels=labels, **kwargs)
        divisor = kwargs['loss_div_factor']
        output = super().model_forward(input_ids, labels=labels, **{**kwargs, 'loss_reduction': 'none'})
        labels = labels.to(output.loss.device, non_blocking=True)
        mask = labels != self.label_ignore_index
        token_loss = torch.where(mask, output.loss, 0.0)  # divided by ``divisor``; the z-loss is not masked
        ce_loss = torch.where(mask, output.ce_loss, 0.0).sum()
        z_loss = None if output.z_loss is None else torch.where(mask, output.z_loss, 0.0).sum()
        loss = token_loss.sum()  # OLMo-core's own loss
        if batch.progress is not None:
            per_sample = per_sample_mean(token_loss * divisor, labels, self.label_ignore_index)
            out = self.reweighter.step(per_sample.loss, per_sample.tokens, batch.progress, capacity=batch.capacity,
                                       sample_id=sample_id, domain=self._domains_of(metadata))
            self.records.append(out.record)
            if out.loss is not None:
                loss = out.loss / batch.microbatches
        return LMOutputWithLoss(logits=None, loss=loss, ce_loss=ce_loss, z_loss=z_loss)

    def state_dict_to_save(self, *, optim: bool | None = None) -> dict[str, Any]:
        """The model and optimizer state, and the reweighter's (:data:`REWEIGHTER_KEY`)."""
        return {**super().state_dict_to_save(optim=optim), REWEIGHTER_KEY: self.reweighter.state_dict()}

    def state_dict_to_load(self, metadata: Metadata, *, optim: bool | None = None) -> dict[str, Any]:
        """What to load: OLMo-core's, and the reweighter's state if the checkpoint has it."""
        state = super().state_dict_to_load(metadata, optim=optim)
        if any(key.startswith(f'{REWEIGHTER_KEY}.') for key in metadata.state_dict_metadata):
            state[REWEIGHTER_KEY] = self.reweighter.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the reweighter's state (settings that changed are kept, with a warning), then OLMo-core's."""
        reweighter = state_dict.pop(REWEIGHTER_KEY, None)
        if reweighter is not None:
            self.reweighter.load_state_dict(reweighter, owner=type(self).__name__)
        super().load_state_dict(state_dict)

    def _progress(self, batch: dict[str, Any]) -> Progress:
        trainer = self.trainer
        step = trainer.global_step - 1  # the trainer counts this batch already
        batch_tokens = trainer.data_loader.global_num_tokens_in_batch(batch)
        max_steps = trainer.max_steps
        return Progress(step, tokens=None if batch_tokens is None else trainer.global_train_tokens_seen - batch_tokens,
                        epoch=trainer.epoch - 1, fraction=None if not max_steps else step / max_steps)

    def _domains_of(self, metadata: list[Any] | None) -> torch.Tensor | None:
        """The micro-batch's domain indices from its instances' metadata (``-1`` where there is none)."""
        if metadata is None:
            return None
        return torch.tensor([self._domain_index(m.get(self.domain_key, -1) if isinstance(m, dict) else -1)
                             for m in metadata])

    def _domain_index(self, value: Any) -> int:
        if not isinstance(value, str):
            return int(value)
        if self.domains is None or value not in self.domains:
            raise ValueError(f'instance metadata names domain {value!r}, which is not in domains={self.domains!r}.')
        return self.domains.index(value)


@dataclass
class ReweighTrainModuleConfig(TransformerTrainModuleConfig):
    """A ``TransformerTrainModuleConfig`` with the method's settings; :meth:`build` makes a :class:`ReweighTrainModule`.

    The extra fields are those of :class:`ReweighTrainModule` (``r_schedule``, a function, is not a config field:
    pass it to the module itself). Pipeline parallelism (``pp_config``) is not supported.
    """

    strategy: str = DEFAULT_STRATEGY
    r: float = DEFAULT_R
    delta: float = DEFAULT_DELTA
    warmup: str | int = DEFAULT_WARMUP_STEPS
    token_normalize: bool = DEFAULT_TOKEN_NORMALIZE
    fused: bool | str = 'auto'
    domain_key: str = 'domain'
    domains: list[str] | None = None

    def build(self, model: Any, device: torch.device | None = None, eval_only: bool = False) -> ReweighTrainModule:
        """Build the :class:`ReweighTrainModule` for ``model`` (OLMo-core's ``Transformer``).

        Raises:
            OLMoConfigurationError: With a ``pp_config``.
        """
        if self.pp_config is not None:
            raise OLMoConfigurationError('ReweighTrainModule does not support pipeline parallelism.')
        kwargs = self.as_dict(exclude_none=True, recurse=False)
        if (precision := kwargs.pop('autocast_precision', None)) is not None:
            kwargs['autocast_precision'] = precision.as_pt()
        for key in ('state_dict_save_opts', 'state_dict_load_opts'):
            if (options := kwargs.pop(key, None)) is not None:
                kwargs[key] = StateDictOptions(**options)
        return ReweighTrainModule(model=model, device=device, eval_only=eval_only, **kwargs)


@dataclass
class LossHistoryCallback(Callback):
    """Write the loss history of a :class:`ReweighTrainModule`: every training instance's loss and weight per step.

    One ``rank{N}`` folder per process under ``folder`` (N the global rank), in the format of
    :mod:`reweigh.history`; a row's ``step`` is ``trainer.global_step - 1`` (the steps completed before it, as
    everywhere in reweigh), its ``sample_id`` the data loader's instance ``index``. Rows are recorded right after
    each batch's backward pass, a part is written every ``flush_interval`` steps and at the end, and when the
    trainer saves a checkpoint the history up to it is written first. A run resumed from a checkpoint of step
    ``N`` drops the rows of steps ``>= N`` that an interrupted attempt wrote.

    Args:
        folder (str): A local folder for the history.
        flush_interval (int): Steps between part files. Default: ``100``.
        run_name (str, optional): The run's name in the history's metadata.

    Raises:
        OLMoConfigurationError: If the trainer's train module is not a :class:`ReweighTrainModule`.
    """

    folder: str
    flush_interval: int = 100
    run_name: str | None = None

    _recorder = None  # a HistoryRecorder while training (not a dataclass field: OLMo-core serialises those)

    def post_attach(self) -> None:
        if not isinstance(self.trainer.train_module, ReweighTrainModule):
            raise OLMoConfigurationError(
                f'LossHistoryCallback records a ReweighTrainModule, not {type(self.trainer.train_module).__name__}.')

    def pre_train(self) -> None:
        """Open the recorder at the step training starts from (after any checkpoint was loaded)."""
        module = self.trainer.train_module
        metadata = encode_metadata(module.reweighter.settings(), run_name=self.run_name,
                                   world_size=get_world_size(self.trainer.dp_process_group), domains=module.domains)
        self._recorder = HistoryRecorder(self.folder, get_rank(), metadata, resume_step=self.step)

    def pre_optim_step(self) -> None:
        for record in self.trainer.train_module.records:
            self._recorder.record(self.step - 1, record)

    def post_step(self) -> None:
        if self.step % self.flush_interval == 0:
            self._recorder.flush(wait=False)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save; the trainer asks while saving a checkpoint, so the history up to it is written here."""
        if self._recorder is not None:
            self._recorder.flush(wait=True)
        return {}

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None
