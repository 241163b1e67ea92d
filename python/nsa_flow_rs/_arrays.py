"""numpy (and torch) in and out: the Python half of the array layer.

Inputs of any real dtype, order, strides or byte order are accepted; float64 and float32
arrays in native byte order (C, Fortran or strided, read-only memmaps included) go to Rust
as they are, and Rust reads them once into its solver's storage. Other dtypes are converted to
float64 first (the only copy made here). Torch tensors are accepted when torch is installed
(torch is imported only when an input is a tensor); the outputs are then tensors of the first
input's dtype and device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import ShapeError

_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))


def is_tensor(x: Any) -> bool:
    """True for a torch.Tensor, without importing torch."""
    t = type(x)
    return t.__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def as_array(x: Any, name: str, ndim: int = 2) -> np.ndarray:
    """`x` as a float64/float32 ndarray of `ndim` dimensions, copied only when needed."""
    if is_tensor(x):
        x = x.detach()
        if x.dtype.is_complex:
            raise ShapeError(f"{name} must be real, got a tensor of {x.dtype}")
        x = x.cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ShapeError(f"{name} is not an array: {e}") from None
    if a.dtype not in _FLOATS or not a.dtype.isnative:
        if a.dtype.kind in "fiub":
            a = a.astype(np.float64)
        else:
            raise ShapeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ShapeError(f"{name} must be a {ndim}-D array, got shape {a.shape}")
    return a


def like(out: Any, ref: Any) -> Any:
    """`out` (an ndarray) as a tensor like `ref` when `ref` is a tensor, else unchanged."""
    if out is None or not is_tensor(ref):
        return out
    import torch

    return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=ref.dtype, device=ref.device)
