"""The nsa_flow 0.7.7 API (and the dispatch of `nsa_flow` to the 3.5 solvers)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from . import _native
from ._arrays import as_array, is_tensor, like
from ._errors import InvalidParameterError, UnknownNameError

TRACE_COLUMNS = ("iter", "time", "fidelity", "orthogonality", "total_energy")

#: the 3.5 modes of `nsa_flow` (and their aliases); any of them selects the 3.5 solvers
FIT_MODES = frozenset({"auto", "data", "nonneg", "signed", "contrast", "anchored", "target"})
#: the 0.7.7 modes of `nsa_flow`
FLOW_MODES = frozenset({"corrected", "reference"})


def traces_table(t: np.ndarray) -> Any:
    """The trace rows as a pandas DataFrame (the reference's type) when pandas is installed,
    else as a dict of numpy columns with the same names."""
    cols = {c: t[:, i] for i, c in enumerate(TRACE_COLUMNS)}
    cols["iter"] = cols["iter"].astype(np.int64)
    try:
        import pandas as pd
    except ImportError:
        return cols
    return pd.DataFrame(cols)


class FlowResult(dict):
    """The result dict of `nsa_flow`, `nsa_flow_autograd` and `nsa_flow_batch`: a plain
    `dict` with the reference's keys whose `traces` table is built on first use.

    Building a pandas DataFrame costs several times what the rest of a small solve's Python
    call does, so the rows stay a numpy array until `traces` is read, by indexing, `get`,
    `items`, `values`, copying, comparing or printing. Pickling keeps the rows as they are
    (a result sent from a joblib or Dask worker builds its table where it is read).
    """

    __slots__ = ("_rows",)

    def __init__(self, d: Any = (), rows: np.ndarray | None = None):
        super().__init__(d)
        self._rows = rows

    def _table(self) -> None:
        rows = self._rows
        if rows is not None:
            self._rows = None
            dict.__setitem__(self, "traces", traces_table(rows))

    def __getitem__(self, key: Any) -> Any:
        if key == "traces":
            self._table()
        return dict.__getitem__(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if key == "traces":
            self._rows = None
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        if key == "traces":
            self._rows = None
        dict.__delitem__(self, key)

    def __iter__(self):  # also makes dict(r), {**r} and d.update(r) go through __getitem__
        return dict.__iter__(self)

    def get(self, key: Any, default: Any = None) -> Any:
        if key == "traces":
            self._table()
        return dict.get(self, key, default)

    def items(self):
        self._table()
        return dict.items(self)

    def values(self):
        self._table()
        return dict.values(self)

    def pop(self, key: Any, *default: Any) -> Any:
        if key == "traces":
            self._table()
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple:
        self._table()
        return dict.popitem(self)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key == "traces":
            self._table()
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._table()  # a `traces` among the new values must replace the table, not precede it
        dict.update(self, *args, **kwargs)

    def __ior__(self, other: Any) -> "FlowResult":
        self._table()
        return dict.__ior__(self, other)

    def clear(self) -> None:
        self._rows = None
        dict.clear(self)

    def copy(self) -> "FlowResult":
        self._table()
        return FlowResult(self)

    def __or__(self, other: Any) -> Any:
        self._table()
        return dict.__or__(self, other)

    def __eq__(self, other: Any) -> Any:
        self._table()
        if isinstance(other, FlowResult):
            other._table()
        return dict.__eq__(self, other)

    def __ne__(self, other: Any) -> Any:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __repr__(self) -> str:
        self._table()
        return dict.__repr__(self)

    def __reduce__(self) -> tuple:
        return (FlowResult, (dict(dict.items(self)), self._rows))


def _backend(backend: str, device: Any) -> str:
    """The reference's `device` argument (a torch device or its name) as a backend."""
    if device is None:
        return backend
    name = str(device).lower()
    wanted = "cpu" if name.startswith("cpu") else "gpu" if name.split(":")[0] in ("cuda", "gpu", "vulkan", "mps") else None
    if wanted is None:
        raise UnknownNameError(f"unknown device '{device}'; expected cpu, cuda[:N], gpu, vulkan or mps")
    if backend not in ("auto", wanted):
        raise InvalidParameterError(f"device={device!r} conflicts with backend={backend!r}")
    return wanted


def _result(d: dict, ref: Any) -> FlowResult:
    if is_tensor(ref):
        for key in ("Y", "target", "start"):
            if key in d:
                d[key] = like(d[key], ref)
    return FlowResult(d, d["traces"])


def _check_precision(precision: str) -> str:
    return {"float64": "f64", "float32": "f32"}.get(precision, precision)


def nsa_flow_077(
    Y0: Any,
    X0: Any = None,
    w: float = 0.5,
    retraction: str = "soft_polar",
    max_iter: int = 500,
    tol: float = 1e-5,
    verbose: bool = False,
    seed: int = 42,
    apply_nonneg: bool | str = True,
    optimizer: str = "fast",
    initial_learning_rate: str | float = "default",
    record_every: int = 1,
    window_size: int = 5,
    c1_armijo: float = 1e-6,
    simplified: bool = False,
    project_full_gradient: bool = False,
    device: Any = None,
    precision: str = "float64",
    *,
    mode: str = "corrected",
    backend: str = "auto",
    gpu_adapter: str | None = None,
    perturbed_start: Any = None,
    n_threads: int | None = None,
) -> FlowResult:
    """nsa_flow 0.7.7's `nsa_flow` (see `nsa_flow`)."""
    y0 = as_array(Y0, "Y0")
    x0 = None if X0 is None else as_array(X0, "X0")
    opts = dict(
        w=w, retraction=retraction, max_iter=max_iter, tol=tol, seed=seed,
        apply_nonneg=apply_nonneg, optimizer=optimizer,
        initial_learning_rate=initial_learning_rate, record_every=record_every,
        window_size=window_size, c1_armijo=c1_armijo, simplified=simplified,
        project_full_gradient=project_full_gradient,
        precision=_check_precision(precision), mode=mode,
        backend=_backend(backend, device), gpu_adapter=gpu_adapter,
        perturbed_start=None if perturbed_start is None else as_array(perturbed_start, "perturbed_start"),
    )
    d = _native.flow(y0, x0, opts, verbose=bool(verbose), n_threads=n_threads)
    return _result(d, Y0)


def nsa_flow_autograd(
    Y0: Any,
    X0: Any = None,
    w: float = 0.5,
    retraction: str = "soft_polar",
    max_iter: int = 500,
    tol: float = 1e-6,
    verbose: bool = False,
    seed: int = 42,
    apply_nonneg: bool | str = True,
    optimizer: str = "asgd",
    initial_learning_rate: float | None = None,
    lr_strategy: str = "auto",
    fidelity_type: str = "scale_invariant",
    orth_type: str = "scale_invariant",
    aggression: float = 0.5,
    record_every: int = 1,
    window_size: int = 5,
    device: Any = None,
    precision: str = "float64",
    *,
    mode: str = "corrected",
    backend: str = "auto",
    gpu_adapter: str | None = None,
    perturbed_start: Any = None,
    n_threads: int | None = None,
) -> FlowResult:
    """nsa_flow 0.7.7's `nsa_flow_autograd`: an optimizer on E(nonneg(R_w(Z))) with exact
    gradients. Returns the reference's keys (Y, traces, final_iter, best_total_energy,
    best_Y_iteration, target) and more (iterations, stop_reason, optimizer, learning_rate, ...).
    """
    y0 = as_array(Y0, "Y0")
    x0 = None if X0 is None else as_array(X0, "X0")
    opts = dict(
        w=w, retraction=retraction, max_iter=max_iter, tol=tol, seed=seed,
        apply_nonneg=apply_nonneg, optimizer=optimizer,
        initial_learning_rate=initial_learning_rate, lr_strategy=lr_strategy,
        fidelity_type=fidelity_type, orth_type=orth_type, aggression=aggression,
        record_every=record_every, window_size=window_size,
        precision=_check_precision(precision), mode=mode,
        backend=_backend(backend, device), gpu_adapter=gpu_adapter,
        perturbed_start=None if perturbed_start is None else as_array(perturbed_start, "perturbed_start"),
    )
    d = _native.autograd(y0, x0, opts, verbose=bool(verbose), n_threads=n_threads)
    return _result(d, Y0)


def nsa_flow_retract_auto(
    Y_cand: Any,
    w_retract: float = 1.0,
    retraction_type: str | None = "soft_polar",
    eps_rf: float = 1e-8,
    inv_method: str = "auto",
    ns_iter: int | None = None,
    eig_thresh: int = 128,
    diag_thresh: int = 8192,
    verbose: bool = False,
    *,
    mode: str = "reference",
) -> Any:
    """nsa_flow 0.7.7's `nsa_flow_retract_auto` (`mode="reference"`, the default, reproduces
    it; `mode="corrected"` is the corrected solver's retraction). `ns_iter=None` is the
    reference's 4 Newton-Schulz iterations in reference mode and a cap of 100
    residual-stopped ones in corrected mode. `retraction_type=None` means "none"."""
    if verbose:
        raise InvalidParameterError("verbose=True: nsa_flow_retract_auto prints nothing in this package")
    y = as_array(Y_cand, "Y_cand")
    opts = dict(
        w_retract=w_retract, retraction_type="none" if retraction_type is None else retraction_type,
        eps_rf=eps_rf, inv_method=inv_method, ns_iter=ns_iter, eig_thresh=eig_thresh,
        diag_thresh=diag_thresh, mode=mode,
    )
    return like(_native.retract(y, opts), Y_cand)


def invariant_orthogonality_defect(V: Any) -> float:
    """`D(V) = Σ_{i≠j} S_ij² / ‖V‖_F⁴` with `S = VᵀV` (0 when `‖V‖² ≤ 1e-12`)."""
    return _native.defect(as_array(V, "V"))


def defect_fast(V: Any) -> float:
    """The reference's `defect_fast`, equal to `invariant_orthogonality_defect`."""
    return _native.defect_fast(as_array(V, "V"))


def optimizers() -> list[str]:
    """The optimizer registry's names (`optimizer=` of `nsa_flow` also takes "fast")."""
    return _native.optimizers()


def nsa_flow_batch(
    Y0s: Any,
    X0s: Any = None,
    ws: float | Sequence[float] = 0.5,
    *,
    n_threads: int | None = None,
    device: Any = None,
    backend: str = "auto",
    precision: str = "float64",
    verbose: bool = False,
    **kwargs: Any,
) -> list[FlowResult]:
    """B problems of one shape at once: `Y0s` and `X0s` are `[B, p, k]`, `ws` one weight or B
    weights; the other keywords are `nsa_flow`'s (0.7.7) and apply to every problem. Returns
    one result dict per problem, each bit-identical to solving that problem alone on the same
    backend. On a GPU the batch is one dispatch dimension; on the CPU the problems run in
    parallel on `n_threads` threads (rayon's default pool when None). Ctrl-C stops every
    problem within one iteration and raises KeyboardInterrupt. `verbose=True` prints each
    iteration of each problem, prefixed by the problem's index."""
    if "perturbed_start" in kwargs:
        raise UnknownNameError("option 'perturbed_start' is not available for nsa_flow_batch")
    y0 = as_array(Y0s, "Y0s", ndim=3)
    x0 = None if X0s is None else as_array(X0s, "X0s", ndim=3)
    b = y0.shape[0]
    wl = [float(ws)] * b if np.ndim(ws) == 0 else [float(v) for v in ws]
    opts = dict(kwargs, precision=_check_precision(precision), backend=_backend(backend, device))
    d = _native.batch(y0, x0, wl, opts, n_threads=n_threads, verbose=bool(verbose))
    out = [_result(r, Y0s) for r in d["results"]]
    for r in out:
        r["batch_backend"] = d["backend"]
    return out


def plot_nsa_trace(trace_df: Any, retraction: str | None = None, figsize: tuple = (8, 5)) -> Any:
    """The reference's dual-axis trace plot: fidelity (left axis) and orthogonality (right
    axis) against iteration. `trace_df` is a result's `traces` (DataFrame or dict) or the
    result dict itself. Needs matplotlib (imported here only); returns the Figure."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_nsa_trace needs matplotlib: pip install matplotlib") from e
    t = trace_df["traces"] if isinstance(trace_df, Mapping) and "traces" in trace_df else trace_df
    try:
        it, fid, orth = (np.asarray(t[c], dtype=float) for c in ("iter", "fidelity", "orthogonality"))
    except (KeyError, TypeError) as e:
        raise InvalidParameterError(f"trace_df needs the columns iter, fidelity, orthogonality ({e})") from None
    fig, ax1 = plt.subplots(figsize=figsize)
    ax1.plot(it, fid, color="tab:blue", label="fidelity")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("fidelity", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(it, orth, color="tab:red", label="orthogonality")
    ax2.set_ylabel("orthogonality", color="tab:red")
    title = "NSA-Flow trace" + (f" ({retraction})" if retraction else "")
    ax1.set_title(title)
    fig.tight_layout()
    return fig
