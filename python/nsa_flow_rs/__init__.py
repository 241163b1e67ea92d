"""nsa_flow_rs: NSA-Flow (non-negative Stiefel approximating flow) from the Rust crate
nsa-flow.

`nsa_flow` serves both published APIs under one name:

* the **0.7.7 flow**, `nsa_flow(Y0, X0=None, w=0.5, retraction=..., ..., mode="corrected"|
  "reference", backend="auto"|"cpu"|"gpu")`, returning the reference's dict (a `FlowResult`:
  `Y`, `traces`, `final_iter`, `best_total_energy`, `best_Y_iteration`, `target`, and more;
  its `traces` DataFrame is built when first read);
* the **3.5 solvers**, `nsa_flow(data_or_target, k=None, w=0.5, mode="auto"|"anchored"|"data"|
  "signed", ...)`, returning an `NSAResult`.

The 3.5 form is chosen when `mode` is a 3.5 mode (auto, anchored, data, signed or an alias:
target, nonneg, contrast), or `k` is given (as a keyword, or as an integer in the second
position, where 0.7.7 has X0), or any 3.5-only keyword is given (nonneg, consolidate, init,
fidelity, sparseness, orth, lobe, signed, continuation, w_start, sigma, memory, neg_mass_tol,
matrix_free). Otherwise (`mode` "corrected" or "reference") it is the 0.7.7 flow. The default
`mode=None` is "corrected" for the 0.7.7 form and "auto" for the 3.5 form.
A 0.7.7-only keyword (retraction, apply_nonneg, ...) given to the 3.5 form is an error.
"""

from __future__ import annotations

import numbers
from typing import Any

from ._errors import (
    BackendError,
    InvalidParameterError,
    NonFiniteError,
    NotDifferentiableError,
    NsaFlowError,
    ResourceError,
    ShapeError,
    UnknownNameError,
)
from ._fit import FIT_ONLY, NSAResult, basis_report, nsa_flow_data, nsa_flow_fit, nsa_flow_signed, varimax
from ._flow import (
    FIT_MODES,
    FLOW_MODES,
    FlowResult,
    defect_fast,
    invariant_orthogonality_defect,
    nsa_flow_077,
    nsa_flow_autograd,
    nsa_flow_batch,
    nsa_flow_retract_auto,
    optimizers,
    plot_nsa_trace,
)

__version__ = "0.1.0"

_SHARED = frozenset({"w", "optimizer", "max_iter", "tol", "seed", "precision", "backend", "gpu_adapter", "n_threads"})


def nsa_flow(Y0: Any, X0: Any = None, w: float = 0.5, *args: Any, mode: str | None = None, k: int | None = None, **kwargs: Any) -> Any:
    """NSA-Flow: the 0.7.7 flow or the 3.5 solvers, by the rule in the package docstring.

    0.7.7: `nsa_flow(Y0, X0=None, w=0.5, retraction="soft_polar", max_iter=500, tol=1e-5,
    verbose=False, seed=42, apply_nonneg=True, optimizer="fast",
    initial_learning_rate="default", record_every=1, window_size=5, c1_armijo=1e-6,
    simplified=False, project_full_gradient=False, device=None, precision="float64", *,
    mode="corrected", backend="auto", gpu_adapter=None, perturbed_start=None, n_threads=None)`.

    3.5: `nsa_flow(data_or_target, k=None, w=0.5, *, mode="auto", nonneg=None, signed=False,
    consolidate=False, optimizer=None, init=None, max_iter=None, tol=None, fidelity="auto",
    sparseness=None, ...)`; see `nsa_flow_fit`.
    """
    if isinstance(X0, numbers.Integral) and not isinstance(X0, bool):
        if k is not None:
            raise InvalidParameterError("k given twice (second argument and k=)")
        k, X0 = int(X0), None
    fit_kw = FIT_ONLY.intersection(kwargs)
    if mode is None:
        mode = "auto" if (k is not None or fit_kw) else "corrected"
    if mode in FIT_MODES or k is not None or fit_kw:
        if mode in FLOW_MODES:
            raise InvalidParameterError(
                f"mode={mode!r} is a 0.7.7 mode but {sorted(fit_kw) or ['k']} selects the 3.5 solvers; "
                "use mode='auto', 'anchored', 'data' or 'signed'")
        if X0 is not None:
            raise InvalidParameterError("the 3.5 form takes no X0: nsa_flow(data_or_target, k, w, mode=...)")
        if args:
            raise InvalidParameterError("the 3.5 form takes (data_or_target, k, w) positionally and the rest as keywords")
        extra = set(kwargs) - FIT_ONLY - _SHARED
        if extra:
            raise UnknownNameError(f"unknown option(s) for the 3.5 form of nsa_flow: {', '.join(sorted(extra))}")
        return nsa_flow_fit(Y0, k, w, mode=mode, **kwargs)
    if mode not in FLOW_MODES:
        raise UnknownNameError(
            f"unknown mode '{mode}'; expected one of: corrected, reference (0.7.7) or "
            "auto, anchored, data, signed, target, nonneg, contrast (3.5)")
    return nsa_flow_077(Y0, X0, w, *args, mode=mode, **kwargs)


__all__ = [
    "nsa_flow", "nsa_flow_fit", "nsa_flow_data", "nsa_flow_signed", "nsa_flow_autograd",
    "nsa_flow_retract_auto", "nsa_flow_batch", "invariant_orthogonality_defect",
    "defect_fast", "varimax", "basis_report", "plot_nsa_trace", "optimizers", "NSAResult",
    "FlowResult",
    "NsaFlowError", "NonFiniteError", "ShapeError", "InvalidParameterError",
    "UnknownNameError", "BackendError", "NotDifferentiableError", "ResourceError",
]
