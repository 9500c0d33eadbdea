"""A causal-LM ComposerModel whose loss exposes per-sample losses (the reweighting fast path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import HuggingFaceModel
from torchmetrics import Metric

from reweigh.algorithms.losses import PerSampleLoss, per_sample_loss

__all__ = ['PER_SAMPLE_LOSS_KEY', 'ReweighCausalLM', 'build_causal_lm']

PER_SAMPLE_LOSS_KEY = 'per_sample_loss'
"""Key under which a model's outputs carry a :class:`PerSampleLoss` for :class:`LossReweighting`.

Any ComposerModel can opt into the fast path by storing ``outputs[PER_SAMPLE_LOSS_KEY]`` (a mapping
output such as a Hugging Face ``ModelOutput``) in its ``loss()``.
"""

_FAMILIES: dict[str, tuple[type, type]] = {
    'gpt2': (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    'llama': (transformers.LlamaConfig, transformers.LlamaForCausalLM),
}


class ReweighCausalLM(HuggingFaceModel):
    """A Hugging Face causal LM as a ComposerModel that computes per-sample losses once.

    ``forward`` runs the network without labels (so Hugging Face computes no loss of its own);
    ``loss`` makes one cross-entropy pass, stores the per-sample losses in the outputs under
    :data:`PER_SAMPLE_LOSS_KEY` and returns the ordinary token-mean loss. Without
    :class:`~reweigh.algorithms.LossReweighting` it trains exactly like plain token-mean training;
    with it, the algorithm reuses the stored losses instead of a second pass over the logits.

    Args:
        model (transformers.PreTrainedModel): A causal LM returning ``logits``.
        tokenizer (transformers.PreTrainedTokenizerBase, optional): Saved with checkpoints.
        metrics (Sequence[Metric], optional): Training metrics. Default: none (they cost time).
        eval_metrics (Sequence[Metric], optional): Evaluation metrics. Default:
            ``LanguageCrossEntropy`` and ``LanguagePerplexity``.

    Example:
        >>> import torch
        >>> from reweigh.algorithms import build_causal_lm
        >>> model = build_causal_lm('gpt2', n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)
        >>> batch = {'input_ids': torch.randint(0, 50, (2, 8))}
        >>> batch['labels'] = batch['input_ids'].clone()
        >>> outputs = model(batch)
        >>> loss = model.loss(outputs, batch)
        >>> outputs['per_sample_loss'].loss.shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: transformers.PreTrainedModel,
        tokenizer: transformers.PreTrainedTokenizerBase | None = None,
        metrics: Sequence[Metric] | None = None,
        eval_metrics: Sequence[Metric] | None = None,
    ) -> None:
        if eval_metrics is None:
            eval_metrics = [LanguageCrossEntropy(), LanguagePerplexity()]
        super().__init__(
            model,
            tokenizer=tokenizer,
            use_logits=True,
            metrics=metrics,
            eval_metrics=eval_metrics,
            shift_labels=True,
        )

    def forward(self, batch: Mapping[str, Any]) -> Any:
        if not isinstance(batch, Mapping) or 'input_ids' not in batch:
            raise ValueError('ReweighCausalLM expects a dict batch with at least "input_ids".')
        inputs = {k: v for k, v in batch.items() if k in self.model_forward_args and k != 'labels'}
        return self.model(**inputs, return_dict=True)

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        per_sample: PerSampleLoss = per_sample_loss(outputs['logits'], batch['labels'])
        outputs[PER_SAMPLE_LOSS_KEY] = per_sample
        return (per_sample.loss * per_sample.tokens).sum() / per_sample.tokens.sum()


def build_causal_lm(
    family: str = 'gpt2',
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
    **config: Any,
) -> ReweighCausalLM:
    """Build a randomly initialised GPT-2 or Llama model (no weight download) as a ReweighCausalLM.

    Args:
        family (str): ``'gpt2'`` or ``'llama'``.
        tokenizer (transformers.PreTrainedTokenizerBase, optional): Saved with checkpoints.
        **config: Keyword arguments of ``GPT2Config`` / ``LlamaConfig`` (``n_layer``, ``n_embd``,
            ``vocab_size``, ``hidden_size``, ...).

    Returns:
        ReweighCausalLM: the wrapped model.

    Raises:
        ValueError: For an unknown family or a configuration ``transformers`` rejects.

    Example:
        >>> from reweigh.algorithms import build_causal_lm
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
    return ReweighCausalLM(model, tokenizer=tokenizer)
