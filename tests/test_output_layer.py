"""The blocked output layer (ablate.models.output_layer) against the plain log-softmax, values and gradients."""

from __future__ import annotations

import pytest
import torch

from ablate.models.output_layer import token_log_probs


def plain(hidden, weight, bias, targets):
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    return logits.log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1)


def inputs(seed: int, n: int = 37, h: int = 8, v: int = 23, bias: bool = True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64)
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, b, targets


@pytest.mark.parametrize("block", [1, 5, 37, 100, None])
def test_values_equal_the_plain_log_softmax_for_any_block(block):
    hidden, weight, bias, targets = inputs(0)
    expected = plain(hidden, weight, bias, targets)
    assert torch.allclose(token_log_probs(hidden, weight, bias, targets, block).double(), expected, atol=1e-5)


@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("weights", ["uniform", "per_position"])
def test_gradients_equal_autograd_of_the_plain_computation(has_bias, weights):
    """Uniform incoming gradients use the gradient formed in the forward pass; others recompute the blocks."""
    hidden, weight, bias, targets = inputs(1, bias=has_bias)
    scale = torch.full((hidden.shape[0],), 0.25, dtype=torch.float64) if weights == "uniform" else \
        torch.linspace(-1.0, 2.0, hidden.shape[0], dtype=torch.float64)
    leaves = [t for t in (hidden, weight, bias) if t is not None]

    def grads(fn):
        copies = [t.clone().requires_grad_(True) for t in leaves]
        args = copies + ([None] if bias is None else [])
        (fn(*args[:3]) * scale).sum().backward()
        return [c.grad for c in copies]

    ours = grads(lambda h, w, b: token_log_probs(h, w, b, targets, block=6).double())
    reference = grads(lambda h, w, b: plain(h, w, b, targets))
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, atol=1e-5)


def test_no_grad_path_needs_no_autograd_and_matches():
    hidden, weight, bias, targets = inputs(2)
    with torch.no_grad():
        out = token_log_probs(hidden.float(), weight.float(), bias.float(), targets, block=4)
    assert not out.requires_grad
    assert torch.allclose(out.double(), plain(hidden, weight, bias, targets), atol=1e-4)


def test_large_logits_stay_finite():
    """A max-shifted softmax: logits of 1e4 neither overflow nor give NaN."""
    hidden, weight, bias, targets = inputs(3)
    out = token_log_probs(hidden * 1e3, weight, bias, targets, block=8)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), plain(hidden * 1e3, weight, bias, targets), rtol=1e-6, atol=1e-3)


def test_training_values_of_improbable_targets_come_from_the_logits():
    """Training reads log p_target off the softmax; where p_target < 1e-30 (here down to e^-3000: 0 in fp32) the
    row's value is logit_target − logsumexp, so it stays finite and exact, and the gradients stay those of autograd."""
    hidden, weight, bias, targets = inputs(3)
    hidden = hidden * 300.0
    h32, w32, b32 = (t.float().requires_grad_(True) for t in (hidden, weight, bias))
    out = token_log_probs(h32, w32, b32, targets, block=8)
    ref = plain(hidden, weight, bias, targets)
    assert (ref < -100).any() and (ref > -1).any()  # both kinds of rows are there
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-3)
    out.sum().backward()
    h64, w64, b64 = (t.clone().requires_grad_(True) for t in (hidden, weight, bias))
    plain(h64, w64, b64, targets).sum().backward()
    for a, b in ((h32.grad, h64.grad), (w32.grad, w64.grad), (b32.grad, b64.grad)):
        assert torch.allclose(a.double(), b, atol=1e-3)


def test_softmax_written_over_its_input_equals_the_softmax():
    """The training blocks' softmax writes over the logits (torch.softmax(x, out=x)): bit for bit the values of
    torch.softmax into a new tensor (pins what a torch upgrade could change)."""
    logits = torch.randn(64, 1521, generator=torch.Generator().manual_seed(0)) * 5
    expected = torch.softmax(logits, 1)
    torch.softmax(logits, 1, out=logits)
    assert torch.equal(logits, expected)


def test_float32_path_matches_float64_reference():
    """fp32 inputs take the CPU's oneDNN products (when present); values and gradients against float64 autograd."""
    hidden, weight, bias, targets = inputs(4, n=50, h=16, v=40)
    h32, w32, b32 = (t.float().requires_grad_(True) for t in (hidden, weight, bias))
    out = token_log_probs(h32, w32, b32, targets, block=7)
    out.sum().backward()
    h64, w64, b64 = (t.clone().requires_grad_(True) for t in (hidden, weight, bias))
    ref = plain(h64, w64, b64, targets)
    ref.sum().backward()
    assert torch.allclose(out.double(), ref, atol=1e-4)
    for a, b in ((h32.grad, h64.grad), (w32.grad, w64.grad), (b32.grad, b64.grad)):
        assert torch.allclose(a.double(), b, atol=1e-4)


def test_evaluation_with_a_packed_weight_matches():
    """Many blocks without gradients use the weight reordered for oneDNN (when present): same values."""
    hidden, weight, bias, targets = inputs(5, n=200, h=16, v=40)
    with torch.no_grad():
        out = token_log_probs(hidden.float(), weight.float(), bias.float(), targets, block=8)
    assert torch.allclose(out.double(), plain(hidden, weight, bias, targets), atol=1e-4)


@pytest.mark.parametrize("grad_w", ["blas", "onednn"])
def test_the_formed_weight_gradient_becomes_the_parameters_grad_without_a_copy(grad_w, monkeypatch):
    """∂W is accumulated into a buffer in the forward pass; autograd's AccumulateGrad takes that buffer as .grad only
    if nothing else holds it (a 10 MB copy a step at Li et al.'s PTB vocabulary otherwise)."""
    import ablate.models.output_layer as layer
    from ablate.models.kernels import ONEDNN, Kernels, using

    if grad_w == "onednn" and not ONEDNN:
        pytest.skip("this torch build has no oneDNN")
    addresses = []  # (not the buffers themselves: a reference held here would make autograd copy)
    accumulator = layer.grad_w_accumulator

    def recorded(*args):
        buffer = accumulator(*args)
        addresses.append(buffer.data_ptr())
        return buffer

    monkeypatch.setattr(layer, "grad_w_accumulator", recorded)
    hidden, weight, bias, targets = inputs(3)
    weight = torch.nn.Parameter(weight.float())
    with using(Kernels(grad_w=grad_w)):
        token_log_probs(hidden.float().requires_grad_(True), weight, None, targets, block=8).mean().backward()
    assert len(addresses) == 1 and weight.grad.data_ptr() == addresses[0]
    reference = weight.detach().double().requires_grad_(True)
    plain(hidden, reference, None, targets).mean().backward()
    assert torch.allclose(weight.grad.double(), reference.grad, atol=1e-5)
