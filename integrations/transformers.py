"""Loss-based sample reweighting in a Hugging Face ``transformers.Trainer``.

:class:`ReweighTrainer` is a ``Trainer`` whose training loss is reweighted with reweigh's functional core
(:func:`~reweigh.algorithms.per_sample_loss`, :func:`~reweigh.algorithms.compute_sample_weights`,
:func:`~reweigh.algorithms.reweighted_loss`), as :class:`~reweigh.algorithms.LossReweighting` does in
Composer: the same weights, the same metrics (``loss_reweighting/...`` in the Trainer's logs) and, with
``history_folder``, the same per-sample loss history (see :mod:`reweigh.history`). It needs
``accelerate``, as every ``Trainer`` does.

Example:
    >>> import contextlib, io, tempfile, torch, transformers
    >>> from datasets import Dataset
    >>> from reweigh.integrations.transformers import ReweighTrainer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    >>> ids = torch.randint(0, 64, (8, 16)).tolist()
    >>> data = Dataset.from_dict({'input_ids': ids, 'labels': ids, 'sample_id': list(range(8)), 'domain': [0, 1] * 4})
    >>> args = transformers.TrainingArguments(
    ...     tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=4, report_to='none', use_cpu=True,
    ...     disable_tqdm=True, log_level='error',
    ... )
    >>> trainer = ReweighTrainer(
    ...     model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=data,
    ...     strategy='linupper', r=1.0, warmup=1, history_folder=tempfile.mkdtemp(),
    ... )
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its logs
    ...     result = trainer.train()
    >>> result.global_step, trainer.state.log_history[-1]['loss_reweighting/active']
    (2, 0.5)
    >>> last = trainer.last_microbatch
    >>> last.active, last.weights.shape, round(float(last.weights.sum()), 4)
    (True, torch.Size([4]), 1.0)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import transformers

from reweigh.algorithms.constants import (
    DEFAULT_DELTA,
    DEFAULT_R,
    DEFAULT_STRATEGY,
    DEFAULT_TOKEN_NORMALIZE,
    DEFAULT_WARMUP_STEPS,
)
from reweigh.algorithms.losses import per_sample_loss
from reweigh.algorithms.reweighter import Progress, Reweighter
from reweigh.algorithms.step import MicrobatchWeights
from reweigh.history.format import encode_metadata
from reweigh.history.recorder import HistoryRecorder, dataset_domain_names

__all__ = ['ID_COLUMNS', 'ReweighTrainer']

ID_COLUMNS = ('sample_id', 'domain')
"""Dataset columns kept for the loss history (never passed to the model)."""


class ReweighTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` with dynamic loss-based sample reweighting (Sow et al., ICLR 2025).

    For each training microbatch the per-sample losses (mean next-token cross-entropy, labels aligned with
    ``input_ids``) are gathered over all processes, turned into weights summing to 1 over the global
    microbatch, and this process backpropagates ``world_size * sum_i w_i l_i`` over its own samples, so that
    after DDP's gradient averaging the update is ``sum_i w_i grad(l_i)`` over the global microbatch. The
    weights are constants in the backward pass. With gradient accumulation each microbatch's loss is
    divided by the number of accumulated microbatches, as the ``Trainer`` does for a model without loss
    kwargs: the update of a step is the mean over its microbatches of ``sum_i w_i grad(l_i)``.

    * Warm-up (the first ``warmup`` optimizer steps) and ``strategy='uniform'``: the model computes its own
      loss exactly as in a plain ``Trainer`` (so such training equals plain training bit for bit); the
      per-sample losses are computed on the side, without gradient, for the metrics and the history.
    * Reweighting: the model is called without ``labels`` and the cross-entropy is computed once, per
      sample, from its logits (no second loss pass, no copy of the logits).
    * ``sample_id`` and ``domain`` columns survive ``remove_unused_columns``; they are removed from the
      inputs before the forward and recorded in the history.
    * Logged with the Trainer's own logs (averaged over the microbatches since the previous log):
      ``loss_reweighting/`` ``weight_entropy``, ``ess``, ``weight_min``, ``weight_max`` (min and max),
      ``nonfinite_losses`` (summed), ``mean_loss`` (the plain mean per-sample loss), ``r`` and ``active``.
      Values stay on the device between logs; nothing in a training step waits for the device.
    * Evaluation is untouched.

    Args:
        *args: Positional arguments of ``transformers.Trainer``.
        strategy (str): A registered strategy: ``'uniform'``, ``'linupper'`` (the paper's best),
            ``'quadratic'``, ``'extremes'``, ``'upper'``, or one added with
            :func:`~reweigh.algorithms.register_strategy`. Default: ``'linupper'``.
        r (float): Softmax temperature, ``> 0``; large values tend to uniform. Default: ``1.0``.
        delta (float): Half-width of the loss normalisation interval, ``> 0``. Default: ``1.0``.
        warmup (int): Optimizer steps (``state.global_step``) of plain training before reweighting starts
            (the paper's ``burnout_steps``). Default: ``1000``.
        r_schedule (Callable[[int], float], optional): Multiplier on ``r`` as a function of
            ``state.global_step``, e.g. ``lambda step: max(1.0, 10.0 - step / 200)``. Default: constant ``r``.
        token_normalize (bool): Fold token counts into the weights (``w_i n_i / sum w_j n_j``), so that
            uniform weights give the token-mean loss. Default: ``False`` (sample-mean).
        fused (bool | str): Compile the step after the all-gather into one region (:mod:`reweigh.algorithms.fused`):
            ``True``, ``False``, or ``'auto'`` (on CUDA). Default: ``'auto'``.
        history_folder (str | os.PathLike, optional): Write every training sample's loss and weight per
            step there, one ``rank{N}`` folder per process (N the global process index), in the format of
            :mod:`reweigh.history`. Parts are written at each log, each checkpoint and the end of ``train()``;
            a resumed run first drops the rows at or past its resumption step. The domain names of a
            ``ClassLabel`` ``domain`` column (or of a reweigh dataset) go into its metadata. Default: no history.
        **kwargs: Keyword arguments of ``transformers.Trainer``.

    Raises:
        ValueError: For an unknown strategy, non-positive ``r`` or ``delta``, a negative ``warmup``, a
            non-callable ``r_schedule``, or reweighting combined with ``compute_loss_func`` or label smoothing
            (the reweighted loss is plain cross-entropy).

    Example:
        >>> from reweigh.integrations.transformers import ReweighTrainer
        >>> # trainer = ReweighTrainer(model=model, args=args, train_dataset=data, strategy='linupper', warmup=1000)
        >>> ReweighTrainer(strategy='linupper', r=0.0)
        Traceback (most recent call last):
        ...
        ValueError: r must be a finite number > 0, got 0.0.
    """

    def __init__(
        self,
        *args: Any,
        strategy: str = DEFAULT_STRATEGY,
        r: float = DEFAULT_R,
        delta: float = DEFAULT_DELTA,
        warmup: int = DEFAULT_WARMUP_STEPS,
        r_schedule: Callable[[int], float] | None = None,
        token_normalize: bool = DEFAULT_TOKEN_NORMALIZE,
        fused: bool | Literal['auto'] = 'auto',
        history_folder: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f'warmup must be a number of optimizer steps >= 0, got {warmup!r}.')
        if r_schedule is not None and not callable(r_schedule):
            raise ValueError(f'r_schedule must be a callable of the global step, got {r_schedule!r}.')
        reweighter = Reweighter(strategy, r, delta, warmup, r_schedule, token_normalize, fused)
        super().__init__(*args, **kwargs)
        if strategy != 'uniform' and (self.compute_loss_func is not None or self.label_smoother is not None):
            raise ValueError(
                'ReweighTrainer reweights the plain per-sample cross-entropy; compute_loss_func and '
                'label_smoothing_factor can only be used with strategy="uniform".',
            )
        self.reweighter = reweighter
        """The framework-free core this trainer drives (settings, step, metrics)."""
        self.history_folder = None if history_folder is None else Path(history_folder)
        self._history: HistoryRecorder | None = None

    strategy = property(lambda self: self.reweighter.strategy, doc='The strategy (see :class:`Reweighter`).')
    r = property(lambda self: self.reweighter.r, doc='The softmax temperature before any schedule.')
    delta = property(lambda self: self.reweighter.delta, doc='Half-width of the loss normalisation interval.')
    warmup = property(lambda self: int(self.reweighter.warmup.value), doc='Optimizer steps of plain training.')
    r_schedule = property(lambda self: self.reweighter.r_schedule, doc='The multiplier on ``r`` (a function of the step).')
    token_normalize = property(lambda self: self.reweighter.token_normalize, doc='Whether token counts are folded in.')

    @property
    def last_microbatch(self) -> MicrobatchWeights | None:
        """What this process used in the latest training microbatch (its losses and slice of the weights)."""
        return None if self.reweighter.last is None else self.reweighter.last.record

    def current_r(self, step: int) -> float:
        """The temperature at optimizer step ``step``: ``r`` times ``r_schedule(step)`` if one is set.

        Raises:
            ValueError: If the schedule yields a temperature that is not > 0.
        """
        return self.reweighter.current_r(Progress(step, clock=step))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in ID_COLUMNS if c not in self._signature_columns]

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        ids = {key: inputs.pop(key) for key in ID_COLUMNS if key in inputs}
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.get('labels')
        if not isinstance(labels, torch.Tensor):
            raise ValueError('ReweighTrainer needs "labels" (aligned with input_ids) in every training batch.')
        step = self.state.global_step
        progress = Progress(step, clock=step)
        if self.reweighter.is_active(progress):
            outputs = model(**{k: v for k, v in inputs.items() if k != 'labels'})
            per_sample = per_sample_loss(outputs['logits'], labels)
        else:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            with torch.no_grad():
                per_sample = per_sample_loss(outputs['logits'].detach(), labels)

        out = self.reweighter.step(per_sample.loss, per_sample.tokens, progress, capacity=self._train_batch_size,
                                   sample_id=_as_tensor(ids.get('sample_id')), domain=_as_tensor(ids.get('domain')))
        if out.loss is not None:
            loss = out.loss
            if self._step_leaves_loss_unscaled(num_items_in_batch):
                loss = loss / getattr(self, 'current_gradient_accumulation_steps', self.args.gradient_accumulation_steps)
        if self.history_folder is not None:
            if self._history is None:
                self._history = self._open_history(step)
            self._history.record(step, out.record)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> Any:
        """``Trainer.prediction_step`` without the id columns (an unlabelled batch goes straight to the model)."""
        inputs = {key: value for key, value in inputs.items() if key not in ID_COLUMNS}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def _step_leaves_loss_unscaled(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """Whether ``training_step`` leaves the loss undivided by the accumulation steps: for a model that takes
        loss kwargs it expects the loss to be a sum over the accumulated tokens already. transformers 4.51 does
        so always; later versions (those with ``current_gradient_accumulation_steps``) only when they counted
        the tokens (``num_items_in_batch``)."""
        if not self.model_accepts_loss_kwargs:
            return False
        return num_items_in_batch is not None or not hasattr(self, 'current_gradient_accumulation_steps')

    def _open_history(self, resume_step: int) -> HistoryRecorder:
        metadata = encode_metadata(self.reweighter.settings(), run_name=self.args.run_name,
                                   world_size=self.accelerator.num_processes,
                                   domains=dataset_domain_names(self.train_dataset))
        return HistoryRecorder(self.history_folder, self.args.process_index, metadata, resume_step)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the reweighting metrics since the previous log to ``logs`` and write the history's pending rows."""
        report = self.reweighter.report()
        if report is not None:
            tensors, scalars = report
            logs.update(zip(tensors.names, tensors.vector.tolist()))  # one device read per log
            logs.update(scalars)
        if self._history is not None:
            self._history.flush(wait=False)
        super().log(logs, start_time)

    def _save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        super()._save_checkpoint(*args, **kwargs)
        if self._history is not None:  # the history on disk covers every step up to the checkpoint
            self._history.flush(wait=True)

    def train(self, *args: Any, **kwargs: Any) -> transformers.trainer_utils.TrainOutput:
        """``transformers.Trainer.train``, writing the rest of the history when training ends or fails."""
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._history is not None:
                self._history.close()
                self._history = None


def _as_tensor(value: Any) -> torch.Tensor | None:
    """A batch's id column as a tensor (a collator may leave it a list), ``None`` if absent."""
    return value if value is None or isinstance(value, torch.Tensor) else torch.as_tensor(value)
