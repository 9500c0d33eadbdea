"""The fused per-sample loss: computed from the hidden states without the logits, and otherwise the same.

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
from reweigh.models import ReweighCausalLM, build_causal_lm, linear_cross_entropy
from reweigh.models.linear_ce import resolve_loss_impl
from reweigh.models.metrics import LanguageCrossEntropy

TINY = {
    'gpt2': dict(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0),
    'llama': dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=97),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def _head_grads(impl: str, chunk_size: int | None, bias: bool = True):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(101, 16, generator=g, requires_grad=True)
    b = torch.randn(101, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, 101, (37,), generator=g)
    targets[::5] = -100
    upstream = torch.rand(37, generator=g)  # a different gradient per token, as reweighting gives
    loss = linear_cross_entropy(hidden, weight, targets, b, impl=impl, chunk_size=chunk_size)
    inputs = (hidden, weight) + ((b,) if bias else ())
    return (loss, *torch.autograd.grad((loss * upstream).sum(), inputs))


@pytest.mark.parametrize('chunk_size', [1, 7, 36, 37, 1000, None])
def test_chunked_equals_materialized_values_and_gradients(chunk_size):
    reference = _head_grads('materialized', None)
    for got, want in zip(_head_grads('chunked', chunk_size), reference):
        assert _rel(got, want) < 1e-5
    assert bool((reference[0][::5] == 0).all())  # ignored targets: loss 0


def test_chunked_gradient_is_exact_in_float64():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, -100, 10, 5, 5, -100, 1, 2])
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, targets, b, impl='chunked', chunk_size=4), (hidden, weight, bias),
    )


def test_bf16_autocast_computes_the_head_in_bf16_and_the_losses_in_fp32():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(500, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 500, (64,), generator=g)
    reference = linear_cross_entropy(hidden, weight, targets, impl='materialized')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, impl='chunked', chunk_size=10)
        bf16 = linear_cross_entropy(hidden, weight, targets, impl='materialized')
    assert loss.dtype == torch.float32
    assert _rel(loss, bf16) < 1e-5  # the same bf16 logits as nn.Linear under autocast
    assert 1e-5 < _rel(loss, reference) < 1e-2  # not computed in fp32 (autocast is honoured), but close
    grad_h, grad_w = torch.autograd.grad(loss.sum(), (hidden, weight))
    assert grad_h.dtype == torch.float32 and grad_w.dtype == torch.float32


def test_bad_head_inputs_are_rejected():
    with pytest.raises(ValueError, match='Expected hidden'):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='chunk_size'):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match='loss_impl must be one of'):
        resolve_loss_impl('fused', torch.device('cpu'))
    with pytest.raises(ValueError, match='needs a CUDA device'):
        resolve_loss_impl('cce', torch.device('cpu'))


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


def test_the_fusable_kernels_used_on_cuda_equal_the_in_place_ones():
    from reweigh.models.linear_ce import (
        _grad_logits_eager,
        _grad_logits_fusable,
        _lse_and_loss_eager,
        _lse_and_loss_fusable,
    )

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 13, generator=g) * 30  # large logits: the max must be taken out before exp
    targets = torch.randint(0, 13, (6, 1), generator=g)
    scale = torch.rand(6, 1, generator=g)
    lse, loss = _lse_and_loss_eager(logits.clone(), targets)
    assert torch.allclose(loss, F.cross_entropy(logits, targets.squeeze(1), reduction='none'))
    for got, want in zip(_lse_and_loss_fusable(logits, targets), (lse, loss)):
        assert torch.allclose(got, want)
    fusable = _grad_logits_fusable(logits, lse, targets, scale)
    assert torch.allclose(fusable, _grad_logits_eager(logits.clone(), lse, targets, scale), atol=1e-7)
