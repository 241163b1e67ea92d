"""The nsa_flow 3.5 API: `nsa_flow(data_or_target, k, w, mode=...)`, `nsa_flow_data`,
`nsa_flow_signed`, `varimax`, `basis_report`, and the `NSAResult` they return."""

from __future__ import annotations

from typing import Any

from . import _native
from ._arrays import as_array, like
from ._errors import InvalidParameterError

#: keywords only the 3.5 solvers take; giving one to `nsa_flow` selects them
FIT_ONLY = frozenset({
    "k", "nonneg", "consolidate", "init", "fidelity", "sparseness", "orth", "lobe", "signed",
    "continuation", "w_start", "sigma", "memory", "neg_mass_tol", "matrix_free",
})


class NSAResult:
    """A 3.5 result (REFERENCE.md §7.3): `Y` (also `.V`; `.components` is `Yᵀ`), `w`, `orth`,
    `mode`, `optimizer`, `energy`, `fidelity`, `defect`, `iters`, `stop_reason`, `grad_map`,
    `tol`, `converged`, `certificate`, `seconds`, `energy_start`, `grad_map_start`,
    `energy_reduction`, `basis_report`, the anchored extras (`target`, `nonneg`,
    `fidelity_mode`, `fidelity_requested`, `target_negative_mass`, `clamp_distance`,
    `scale_ratio`, `n_grad`, `n_energy`, `w_schedule`), `matrix_free` (data) and the signed
    extras (`parts`, `parts_report`, `lobe_overlap`, `consolidated`, `parts_*`). Picklable."""

    def __init__(self, fields: dict):
        self.__dict__.update(fields)

    @property
    def V(self) -> Any:
        return self.Y

    @property
    def components(self) -> Any:
        return self.Y.T

    def __repr__(self) -> str:
        p, k = self.Y.shape
        return (f"NSAResult(mode={self.mode!r}, {p}x{k}, w={self.w}, energy={self.energy:.6g}, "
                f"iters={self.iters}, stop_reason={self.stop_reason!r}, grad_map={self.grad_map:.2e})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NSAResult):
            return NotImplemented
        import numpy as np

        a, b = self.__dict__, other.__dict__
        if a.keys() != b.keys():
            return False
        for key in a:
            if key == "seconds":
                continue
            x, y = a[key], b[key]
            if hasattr(x, "shape") or hasattr(y, "shape"):
                if not (x is not None and y is not None and np.array_equal(np.asarray(x), np.asarray(y))):
                    return False
            elif x != y:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def _fit(input: Any, k: int | None, mode: str, ref: Any, n_threads: int | None, opts: dict) -> NSAResult:
    x = as_array(input, "data_or_target")
    init = opts.get("init")
    if init is not None and not isinstance(init, str):
        opts["init"] = as_array(init, "init")
    d = _native.fit(x, k, mode, {k_: v for k_, v in opts.items() if v is not None}, n_threads=n_threads)
    for key in ("Y", "parts"):
        d[key] = like(d[key], ref)
    if d["mode"] == "anchored":
        d["target"] = ref
        d["nonneg"] = opts.get("nonneg_target", True) is not False
        d["fidelity_requested"] = opts.get("fidelity") or "auto"
    return NSAResult(d)


def nsa_flow_fit(
    data_or_target: Any,
    k: int | None = None,
    w: float = 0.5,
    *,
    mode: str = "auto",
    nonneg: bool | None = None,
    signed: bool = False,
    consolidate: bool = False,
    optimizer: str | None = None,
    init: Any = None,
    max_iter: int | None = None,
    tol: float | None = None,
    fidelity: str = "auto",
    sparseness: float | None = None,
    orth: str | None = None,
    lobe: float | None = None,
    continuation: int | None = None,
    w_start: float | None = None,
    sigma: float | None = None,
    memory: int | None = None,
    neg_mass_tol: float | None = None,
    matrix_free: bool | None = None,
    seed: int | None = None,
    backend: str = "auto",
    precision: str = "float64",
    gpu_adapter: str | None = None,
    n_threads: int | None = None,
) -> NSAResult:
    """3.5's `nsa_flow(data_or_target, k=None, w=0.5, mode="auto", ...)`.

    Mode: `signed=True` → signed; `k` given and `nonneg` given → data if `nonneg` else signed;
    otherwise `mode` ("auto": anchored without `k`, signed when the data has an entry below
    -1e-12, else data; aliases nonneg=data, contrast=signed, target=anchored). In the
    anchored mode `nonneg` (default True) enforces `Y ≥ 0`. `max_iter` is a budget of
    gradient evaluations (default 20000); `tol` defaults to 1e-6 (f64) / 1e-4 (f32)."""
    if signed:
        mode = "signed"
    elif k is not None and nonneg is not None and mode == "auto":
        mode = "data" if nonneg else "signed"
    nonneg_target = None
    if nonneg is not None:
        resolved = mode if mode != "auto" else ("anchored" if k is None else None)
        if resolved in ("anchored", "target"):
            nonneg_target = bool(nonneg)
        elif resolved in ("data", "nonneg") and not nonneg:
            raise InvalidParameterError("nonneg=False contradicts mode='data'")
        elif resolved in ("signed", "contrast") and nonneg:
            raise InvalidParameterError("nonneg=True contradicts mode='signed'")
    opts = dict(
        w=w, orth=orth, optimizer=optimizer, max_iter=max_iter, tol=tol, memory=memory,
        sigma=sigma, sparseness=sparseness, consolidate=consolidate, lobe=lobe,
        fidelity=fidelity, neg_mass_tol=neg_mass_tol, nonneg_target=nonneg_target,
        continuation=continuation, w_start=w_start, matrix_free=matrix_free, init=init,
        seed=seed, precision={"float64": "f64", "float32": "f32"}.get(precision, precision),
        backend=backend, gpu_adapter=gpu_adapter,
    )
    return _fit(data_or_target, k, mode, data_or_target, n_threads, opts)


def nsa_flow_data(X: Any, k: int, w: float = 0.5, *, init: Any = "clamp", orth: str = "D", **kwargs: Any) -> NSAResult:
    """3.5's `nsa_flow_data`: a non-negative, near-orthonormal basis `V` (p×k) reconstructing
    `X` (n×p): `(1−w)‖X − XVVᵀ‖²/‖X‖² + w·Orth(V)`, `V ≥ 0`. Keywords as `nsa_flow`'s 3.5 form."""
    return nsa_flow_fit(X, k, w, mode="data", init=init, orth=orth, **kwargs)


def nsa_flow_signed(
    X: Any, k: int, w: float = 0.5, *, init: Any = "auto", orth: str = "Cg", lobe: float = 1.0,
    consolidate: bool = False, **kwargs: Any,
) -> NSAResult:
    """3.5's `nsa_flow_signed`: `V = V⁺ − V⁻` with near-disjoint non-negative parts."""
    return nsa_flow_fit(X, k, w, mode="signed", init=init, orth=orth, lobe=lobe, consolidate=consolidate, **kwargs)


def varimax(E: Any) -> Any:
    """3.5's `varimax`: the Kaiser-normalised varimax rotation of `E` (p×k), with 3.5's sign
    gauge (largest-magnitude entry of each column positive) and column order."""
    return like(_native.varimax(as_array(E, "E")), E)


def basis_report(Y: Any) -> dict:
    """3.5's `basis_report`: defect_D, defect_Cg, defect_C, defect_Coff, raw_defect,
    effective_rank, column_norm_ratio, sparsity, max_support, mean_support, n_dead_columns,
    support_overlap (supports at 1e-8 of the peak magnitude)."""
    return _native.basis_report(as_array(Y, "Y"))
