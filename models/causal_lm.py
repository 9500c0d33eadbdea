"""A causal-LM ComposerModel whose loss exposes per-sample losses (the reweighting fast path)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers
from composer.models import HuggingFaceModel
from torch import nn
from torchmetrics import Metric

from reweigh.algorithms.losses import PER_SAMPLE_LOSS_KEY, per_sample_loss, per_sample_mean, shift_labels
from reweigh.models.linear_ce import LOSS_IMPLS, linear_cross_entropy, resolve_loss_impl
from reweigh.models.metrics import LanguageCrossEntropy, LanguagePerplexity

log = logging.getLogger(__name__)

__all__ = ['PER_SAMPLE_LOSS_KEY', 'TOKEN_LOSS_KEY', 'ReweighCausalLM', 'build_causal_lm']

TOKEN_LOSS_KEY = 'token_loss'
"""Key of the ``(batch, seq)`` float32 token losses in :class:`ReweighCausalLM`'s fused outputs."""

_FAMILIES: dict[str, tuple[type, type]] = {
    'gpt2': (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    'llama': (transformers.LlamaConfig, transformers.LlamaForCausalLM),
}

_FUSED_MODELS = frozenset({
    'GPT2LMHeadModel', 'LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM',
})
"""Models whose logits are exactly ``lm_head(final hidden states)`` (no soft-capping or logit scaling)."""


class _LossHead(nn.Linear):
    """The model's own ``lm_head`` parameters behind a head that returns token losses when asked.

    It replaces the ``nn.Linear`` in place, sharing its ``weight`` (tied or not) and ``bias``, so the
    state dict, weight tying, FSDP wrapping and ``generate`` are unchanged. While
    :attr:`targets` is set, ``forward`` returns ``(batch, seq)`` token losses instead of logits; it runs
    inside the Hugging Face model's own forward, where FSDP has gathered the weight.
    """

    def __init__(self, linear: nn.Linear, impl: str, chunk_size: int | None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.impl, self.chunk_size = impl, chunk_size
        self.targets: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        targets = self.targets
        if targets is None:
            return super().forward(hidden)
        if hidden.shape[:-1] != targets.shape:
            raise ValueError(f'lm_head got hidden states {tuple(hidden.shape)} for targets {tuple(targets.shape)}.')
        loss = linear_cross_entropy(
            hidden.flatten(0, -2), self.weight, targets.flatten(), self.bias, impl=self.impl, chunk_size=self.chunk_size,
        )
        return loss.view(targets.shape)


def _install_loss_head(model: transformers.PreTrainedModel, loss_impl: str, chunk_size: int | None) -> None:
    """Put a :class:`_LossHead` in place of ``model``'s ``lm_head`` unless ``loss_impl`` or the model rules it out."""
    head = model.get_output_embeddings()
    if isinstance(head, _LossHead):  # the model was wrapped before: start again from a plain head
        head = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None, device='meta')
        head.weight, head.bias = model.get_output_embeddings().weight, model.get_output_embeddings().bias
        model.set_output_embeddings(head)
    if loss_impl == 'materialized':
        return
    supported = type(model).__name__ in _FUSED_MODELS and type(head) is nn.Linear
    if not supported:
        if loss_impl != 'auto':
            raise ValueError(
                f'loss_impl {loss_impl!r} needs a model whose logits are lm_head(hidden states) '
                f'({", ".join(sorted(_FUSED_MODELS))}); {type(model).__name__} is not one. Use loss_impl="materialized".',
            )
        log.info('ReweighCausalLM: %s is not known to the fused loss; using materialized logits.', type(model).__name__)
        return
    model.set_output_embeddings(_LossHead(head, loss_impl, chunk_size))


def _set_fsdp_policies(model: transformers.PreTrainedModel) -> None:
    """Let Composer's FSDP shard and activation-checkpoint each transformer block (``_no_split_modules``)."""
    block_names = set(getattr(model, '_no_split_modules', None) or ())
    if not block_names or hasattr(model, 'fsdp_wrap_fn'):
        return

    def is_block(module: nn.Module) -> bool:
        return type(module).__name__ in block_names

    model.fsdp_wrap_fn = is_block
    model.activation_checkpointing_fn = is_block


class ReweighCausalLM(HuggingFaceModel):
    """A Hugging Face causal LM as a ComposerModel that computes per-sample losses once.

    ``forward`` runs the network with the language-model head computing token losses straight from the
    final hidden states, chunk by chunk (``loss_impl``: see
    :func:`~reweigh.models.linear_ce.linear_cross_entropy`), so the ``(batch, seq, vocab)`` logits
    never exist; ``loss`` stores the per-sample losses in the outputs under :data:`PER_SAMPLE_LOSS_KEY`
    and returns the ordinary token-mean loss. Without :class:`~reweigh.algorithms.LossReweighting` it
    trains exactly like plain token-mean training; with it, the algorithm reuses the stored losses.
    Evaluation uses the token losses too (see :mod:`reweigh.models.metrics`). A batch without
    ``labels`` (generation, Composer's ICL evaluation) gets ordinary logits.

    Args:
        model (transformers.PreTrainedModel): A causal LM returning ``logits``.
        tokenizer (transformers.PreTrainedTokenizerBase, optional): Saved with checkpoints.
        metrics (Sequence[Metric], optional): Training metrics. Default: none (they cost time).
        eval_metrics (Sequence[Metric], optional): Evaluation metrics. Default:
            :class:`~reweigh.models.metrics.LanguageCrossEntropy` and
            :class:`~reweigh.models.metrics.LanguagePerplexity`.
        loss_impl (str): ``'auto'`` (per batch: ``'cce'`` on CUDA when cut-cross-entropy is installed; else
            ``'materialized'`` when the batch's logits fit in one chunk, ``'chunked'`` beyond; a model outside
            the fused allow-list always gets ``'materialized'``), ``'chunked'``, ``'cce'``, or
            ``'materialized'`` (full logits, then cross-entropy). Default: ``'auto'``.
        chunk_size (int, optional): Tokens per chunk for ``'chunked'``. Default: 256 MiB of fp32 logits.

    Raises:
        ValueError: For an unknown ``loss_impl``, or a fused one the model does not support.

    Example:
        >>> import torch
        >>> from reweigh.models import build_causal_lm
        >>> model = build_causal_lm('gpt2', n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)
        >>> batch = {'input_ids': torch.randint(0, 50, (2, 8))}
        >>> batch['labels'] = batch['input_ids'].clone()
        >>> outputs = model(batch)
        >>> loss = model.loss(outputs, batch)
        >>> outputs['per_sample_loss'].loss.shape, outputs['token_loss'].shape
        (torch.Size([2]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        model: transformers.PreTrainedModel,
        tokenizer: transformers.PreTrainedTokenizerBase | None = None,
        metrics: Sequence[Metric] | None = None,
        eval_metrics: Sequence[Metric] | None = None,
        loss_impl: str = 'auto',
        chunk_size: int | None = None,
    ) -> None:
        if loss_impl not in LOSS_IMPLS:
            raise ValueError(f'loss_impl must be one of {", ".join(LOSS_IMPLS)}; got {loss_impl!r}.')
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f'chunk_size must be >= 1, got {chunk_size}.')
        if eval_metrics is None:
            eval_metrics = [LanguageCrossEntropy(), LanguagePerplexity()]
        _install_loss_head(model, loss_impl, chunk_size)
        _set_fsdp_policies(model)
        super().__init__(
            model,
            tokenizer=tokenizer,
            use_logits=True,
            metrics=metrics,
            eval_metrics=eval_metrics,
            shift_labels=True,
        )
        self.loss_impl = loss_impl

    @property
    def fused(self) -> bool:
        """Whether the loss is computed from the hidden states without materialising the logits."""
        return self._loss_head() is not None

    def _loss_head(self) -> _LossHead | None:
        head = self.model.get_output_embeddings()
        return head if isinstance(head, _LossHead) else None

    def forward(self, batch: Mapping[str, Any]) -> Any:
        if not isinstance(batch, Mapping) or 'input_ids' not in batch:
            raise ValueError('ReweighCausalLM expects a dict batch with at least "input_ids".')
        inputs = {k: v for k, v in batch.items() if k in self.model_forward_args and k != 'labels'}
        head = self._loss_head()
        if head is None or 'labels' not in batch:
            return self.model(**inputs, return_dict=True)
        resolve_loss_impl(head.impl, batch['input_ids'].device)  # a clear error before the forward pass
        head.targets = shift_labels(batch['labels'])
        try:
            outputs = self.model(**inputs, return_dict=True)
        finally:
            head.targets = None
        return {TOKEN_LOSS_KEY: outputs.logits}

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        if TOKEN_LOSS_KEY in outputs:
            per_sample = per_sample_mean(outputs[TOKEN_LOSS_KEY], shift_labels(batch['labels']))
        else:
            per_sample = per_sample_loss(outputs['logits'], batch['labels'])
        outputs[PER_SAMPLE_LOSS_KEY] = per_sample
        return (per_sample.loss * per_sample.tokens).sum() / per_sample.tokens.sum()

    def eval_forward(self, batch: Any, outputs: Any | None = None) -> Any:
        if not self.fused or batch.get('mode') in ('generate', 'icl_task') or 'labels' not in batch:
            return super().eval_forward(batch, outputs)
        self.labels = shift_labels(batch['labels'])
        outputs = outputs if outputs else self.forward(batch)
        return outputs[TOKEN_LOSS_KEY]


def build_causal_lm(
    family: str = 'gpt2',
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
    loss_impl: str = 'auto',
    chunk_size: int | None = None,
    **config: Any,
) -> ReweighCausalLM:
    """Build a randomly initialised GPT-2 or Llama model (no weight download) as a ReweighCausalLM.

    Args:
        family (str): ``'gpt2'`` or ``'llama'``.
        tokenizer (transformers.PreTrainedTokenizerBase, optional): Saved with checkpoints.
        loss_impl (str): How the loss is computed; see :class:`ReweighCausalLM`. Default: ``'auto'``.
        chunk_size (int, optional): Tokens per chunk for ``'chunked'``; see :class:`ReweighCausalLM`.
        **config: Keyword arguments of ``GPT2Config`` / ``LlamaConfig`` (``n_layer``, ``n_embd``,
            ``vocab_size``, ``hidden_size``, ...).

    Returns:
        ReweighCausalLM: the wrapped model.

    Raises:
        ValueError: For an unknown family, a configuration ``transformers`` rejects, or a bad ``loss_impl``.

    Example:
        >>> from reweigh.models import build_causal_lm
        >>> model = build_causal_lm('llama', hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
        >>> type(model.model).__name__
        'LlamaForCausalLM'
    """
    if family not in _FAMILIES:
        raise ValueError(f'Unknown model family {family!r}; available: {", ".join(sorted(_FAMILIES))}.')
    config_cls, model_cls = _FAMILIES[family]
    try:
        hf_config = config_cls(**config)
        model = model_cls(hf_config)
    except (TypeError, ValueError) as e:
        raise ValueError(f'Invalid {family} configuration {config}: {e}') from e
    return ReweighCausalLM(model, tokenizer=tokenizer, loss_impl=loss_impl, chunk_size=chunk_size)
