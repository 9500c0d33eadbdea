"""The fused per-sample loss in the Composer model: computed from the hidden states without the logits, and otherwise
the same (the head on its own: tests/test_linear_ce.py).

Fused (``chunked``) and materialised losses and gradients agree to 1e-5 relative in fp32, for GPT-2 (tied
head) and Llama (untied), through a real Composer run with reweighting and through evaluation; no tensor
of ``(batch, seq, vocab)`` elements is ever created on the fused path; bad choices fail clearly.
"""

from __future__ import annotations

import pytest
import torch
from composer.core import Evaluator
from lm_helpers import SEQ, VOCAB, TokenDataset, make_trainer, params, tiny_gpt2
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from reweigh.algorithms import LossReweighting
from reweigh.models import ReweighCausalLM, build_causal_lm
from reweigh.models.metrics import LanguageCrossEntropy

TINY = {
    'gpt2': dict(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0),
    'llama': dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=97),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def _model_grads(family: str, loss_impl: str):
    torch.manual_seed(0)
    model = build_causal_lm(family, loss_impl=loss_impl, chunk_size=5, **TINY[family])
    ids = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[1, 10:] = -100
    batch = {'input_ids': ids, 'labels': labels}
    outputs = model(batch)
    token_mean = model.loss(outputs, batch)
    per_sample = outputs['per_sample_loss']
    weighted = (per_sample.loss * torch.tensor([0.2, 0.5, 0.3])).sum()
    grads = torch.autograd.grad(weighted, [p for _, p in model.named_parameters()])
    return model, token_mean, per_sample, grads


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_model_fused_equals_materialized(family):
    fused, mean_f, sample_f, grads_f = _model_grads(family, 'chunked')
    plain, mean_m, sample_m, grads_m = _model_grads(family, 'materialized')
    assert fused.fused and not plain.fused
    assert list(fused.state_dict()) == list(plain.state_dict())  # checkpoints are interchangeable
    assert _rel(mean_f, mean_m) < 1e-5 and _rel(sample_f.loss, sample_m.loss) < 1e-5
    assert sample_f.tokens.tolist() == sample_m.tokens.tolist() == [15, 9, 15]
    for got, want in zip(grads_f, grads_m):
        assert _rel(got, want) < 1e-5
    if family == 'gpt2':  # the tied head still shares the embedding
        assert fused.model.get_output_embeddings().weight is fused.model.get_input_embeddings().weight


def test_fused_path_never_creates_a_logits_sized_tensor():

    class LargestTensor(TorchDispatchMode):

        def __init__(self) -> None:
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    batch_size, vocab = 4, 4096
    ids = torch.randint(0, vocab, (batch_size, SEQ))
    batch = {'input_ids': ids, 'labels': ids}
    sizes = {}
    for impl in ('chunked', 'materialized'):
        torch.manual_seed(0)
        model = build_causal_lm('gpt2', loss_impl=impl, chunk_size=8, n_layer=1, n_embd=16, n_head=2,
                                vocab_size=vocab, n_positions=SEQ)
        with LargestTensor() as mode:
            loss = model.loss(model(batch), batch)
            loss.backward()
        sizes[impl] = mode.largest
    logits = batch_size * SEQ * vocab
    assert sizes['materialized'] >= logits  # the detector sees the logits where they exist
    assert sizes['chunked'] <= vocab * 16  # the (vocab, hidden) weight gradient; a chunk of logits is 8 x vocab


def test_training_with_reweighting_is_the_same_fused_or_materialized():
    trained = {}
    for impl in ('chunked', 'materialized'):
        trainer = make_trainer(
            tiny_gpt2(loss_impl=impl), [LossReweighting('linupper', warmup='1ba')], max_duration='3ba',
            device_train_microbatch_size=4,
        )
        trainer.fit()
        trained[impl] = params(trainer)
    for name, value in trained['materialized'].items():
        assert _rel(trained['chunked'][name], value) < 1e-5, name


def test_evaluation_uses_token_losses_and_matches_composers_metric():
    results = {}
    for impl in ('chunked', 'materialized'):
        model = tiny_gpt2(loss_impl=impl)
        evaluator = Evaluator(label='val', dataloader=DataLoader(TokenDataset(16, seed=1), batch_size=8),
                              metric_names=['LanguageCrossEntropy', 'LanguagePerplexity'])
        trainer = make_trainer(model, max_duration='1ba', eval_dataloader=evaluator, eval_interval='1ba')
        trainer.fit()
        metrics = trainer.state.eval_metrics['val']
        results[impl] = {name: float(m.compute()) for name, m in metrics.items()}
        assert isinstance(metrics['LanguageCrossEntropy'], LanguageCrossEntropy)
    assert results['chunked'] == pytest.approx(results['materialized'], rel=1e-5)
    assert results['chunked']['LanguagePerplexity'] == pytest.approx(
        torch.tensor(results['chunked']['LanguageCrossEntropy']).exp().item(), rel=1e-5,
    )


def test_metric_from_token_losses_equals_metric_from_logits():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 11, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    targets[1, 3:] = -100
    token_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction='none').view(2, 5)
    from_logits, from_losses = LanguageCrossEntropy(), LanguageCrossEntropy()
    from_logits.update(logits, targets)
    from_losses.update(token_loss, targets)
    assert from_losses.compute().item() == pytest.approx(from_logits.compute().item(), rel=1e-6)


def test_batches_without_labels_still_get_logits_for_generation():
    model = tiny_gpt2()
    ids = torch.randint(0, VOCAB, (2, 4))
    assert model({'input_ids': ids}).logits.shape == (2, 4, VOCAB)
    assert model.model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (2, 7)


def test_loss_impl_choices():
    assert tiny_gpt2().fused  # auto on CPU: chunked
    assert not tiny_gpt2(loss_impl='materialized').fused
    with pytest.raises(ValueError, match='loss_impl must be one of'):
        tiny_gpt2(loss_impl='fast')
    rewrapped = ReweighCausalLM(tiny_gpt2().model, loss_impl='materialized')  # wrapping again undoes the head
    assert type(rewrapped.model.get_output_embeddings()) is torch.nn.Linear

    class OwnHead(torch.nn.Module):  # a model the fused loss does not know: auto falls back, chunked refuses
        pass

    hf = tiny_gpt2(loss_impl='materialized').model
    hf.__class__ = type('CustomLM', (type(hf),), {})
    assert not ReweighCausalLM(hf).fused
    with pytest.raises(ValueError, match='not one'):
        ReweighCausalLM(hf, loss_impl='chunked')
    with pytest.raises(ValueError, match="needs a CUDA device"):
        model = tiny_gpt2(loss_impl='cce')
        ids = torch.randint(0, VOCAB, (1, SEQ))
        model({'input_ids': ids, 'labels': ids})
