"""torch: NSA-Flow as a differentiable layer.

`NSAFlowFunction` is a `torch.autograd.Function` whose forward is a batch solve `[B, p, k]`
(the crate's `NsaFlowLayer`, one `nsa_flow_batch` call) and whose backward is the crate's
exact backward of the unrolled iterations (decisions frozen; corrected mode with the "fast"
step: other settings raise `NotDifferentiableError` in backward). `NSAFlowLayer` is the
reference's module (`nsaf_layer.NSAFlowLayer`) on top of it: a 2-D input becomes `[1, p, k]`,
`Y0 = X0` unless given. Outputs have the input's dtype and device; the solve runs on the CPU
in float64 (or on the crate's GPU backend with `backend="gpu"`), the backward on the CPU in
float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _native
from ._errors import ShapeError


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()


def _back(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(a).to(dtype=like.dtype, device=like.device)


class NSAFlowFunction(torch.autograd.Function):
    """`NSAFlowFunction.apply(X0, Y0, layer)`: `X0` `[B, p, k]`, `Y0` `[B, p, k]` or None,
    `layer` a `nsa_flow_rs._native.Layer` (see `NSAFlowLayer.native`)."""

    @staticmethod
    def forward(ctx: Any, X0: torch.Tensor, Y0: torch.Tensor | None, layer: Any) -> torch.Tensor:
        ys, state = layer.forward(_np(X0), None if Y0 is None else _np(Y0))
        ctx.layer, ctx.state, ctx.has_y0 = layer, state, Y0 is not None
        ctx.x_like, ctx.y_like = X0, Y0
        return _back(ys, X0)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple:
        gx, gy = ctx.layer.backward(ctx.state, _np(grad_y))
        return _back(gx, ctx.x_like), (_back(gy, ctx.y_like) if ctx.has_y0 else None), None


class NSAFlowLayer(torch.nn.Module):
    """The reference's `NSAFlowLayer(w=0.5, retraction="soft_polar", max_iter=50, tol=1e-5,
    apply_nonneg=True, optimizer="fast", initial_learning_rate="default", simplified=False,
    project_full_gradient=False)`, plus `mode` (default "corrected", the differentiable one),
    `backend` and `precision`; the gradient flows to X0 (and Y0 when given)."""

    def __init__(
        self,
        w: float = 0.5,
        retraction: str = "soft_polar",
        max_iter: int = 50,
        tol: float = 1e-5,
        apply_nonneg: bool | str = True,
        optimizer: str = "fast",
        initial_learning_rate: str | float = "default",
        simplified: bool = False,
        project_full_gradient: bool = False,
        *,
        mode: str = "corrected",
        backend: str = "auto",
        precision: str = "float64",
    ):
        super().__init__()
        self.native = _native.Layer(dict(
            w=w, retraction=retraction, max_iter=max_iter, tol=tol, apply_nonneg=apply_nonneg,
            optimizer=optimizer, initial_learning_rate=initial_learning_rate,
            simplified=simplified, project_full_gradient=project_full_gradient, mode=mode,
            backend=backend, precision={"float64": "f64", "float32": "f32"}.get(precision, precision),
        ))
        self.w = w

    def forward(self, X0: torch.Tensor, Y0: torch.Tensor | None = None) -> torch.Tensor:
        if X0.dim() == 2:
            X0 = X0.unsqueeze(0)
            Y0 = None if Y0 is None else Y0.unsqueeze(0)
        if X0.dim() != 3 or (Y0 is not None and Y0.shape != X0.shape):
            raise ShapeError(f"X0 must be [B, p, k] (or [p, k]) and Y0 like it; got {tuple(X0.shape)}"
                             + ("" if Y0 is None else f" and {tuple(Y0.shape)}"))
        return NSAFlowFunction.apply(X0, Y0, self.native)
