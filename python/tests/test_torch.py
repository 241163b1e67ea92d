"""torch: tensors in → tensors out, and NSAFlowLayer's backward (the crate's exact backward)
through torch.autograd.gradcheck in float64. CI installs torch; elsewhere these skip, saying
why, when torch is absent."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch to run these)")

import nsa_flow_rs as nf  # noqa: E402
from nsa_flow_rs.torch import NSAFlowFunction, NSAFlowLayer  # noqa: E402


def target(seed=0, p=8, k=3, b=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, p, k, generator=g, dtype=torch.float64) + 0.5)


def test_tensors_in_tensors_out():
    x = target()[0]
    r = nf.nsa_flow(x, x, 0.5, max_iter=10)
    assert isinstance(r["Y"], torch.Tensor) and r["Y"].dtype == torch.float64
    ref = nf.nsa_flow(x.numpy(), x.numpy(), 0.5, max_iter=10)
    assert np.array_equal(r["Y"].numpy(), ref["Y"])
    r32 = nf.nsa_flow(x.float(), None, 0.5, max_iter=5)
    assert r32["Y"].dtype == torch.float32
    assert isinstance(nf.nsa_flow_retract_auto(x, 0.5), torch.Tensor)
    assert isinstance(nf.nsa_flow(x, mode="anchored").Y, torch.Tensor)
    assert nf.invariant_orthogonality_defect(x) == pytest.approx(nf.invariant_orthogonality_defect(x.numpy()))


def test_layer_forward_equals_batch_solve():
    x = target()
    layer = NSAFlowLayer(w=0.6, max_iter=20)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    want = nf.nsa_flow_batch(x.numpy(), x.numpy(), 0.6, max_iter=20)
    for b in range(2):
        assert np.array_equal(y[b].detach().numpy(), want[b]["Y"])
    assert layer(x[0]).shape == (1, 8, 3)


@pytest.mark.parametrize("with_y0", [False, True])
def test_gradcheck_f64(with_y0):
    layer = NSAFlowLayer(w=0.4, max_iter=6, initial_learning_rate=0.05)
    x = target(1).requires_grad_(True)
    if with_y0:
        y0 = (x.detach() * 0.9 + 0.05).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: NSAFlowFunction.apply(a, b, layer.native), (x, y0),
                                        eps=1e-6, atol=1e-5, rtol=1e-4)
    else:
        assert torch.autograd.gradcheck(lambda a: layer(a), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_not_differentiable_settings_raise_in_backward():
    layer = NSAFlowLayer(w=0.4, max_iter=5, mode="reference")
    x = target().requires_grad_(True)
    y = layer(x)
    with pytest.raises(nf.NotDifferentiableError):
        y.sum().backward()
