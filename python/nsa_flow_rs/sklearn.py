"""scikit-learn: `NSAFlow`, a transformer over the 3.5 solvers (nsa_flow 3.5's estimator).

`fit(X)` learns a basis `V` (p×k) of the (centred) data X (n×p) with `nsa_flow(X, k, w,
mode=...)`; `transform(X) = (X − mean_)·V`. Attributes: `components_` (k×p, `Vᵀ`),
`result_` (the `NSAResult`), `converged_`, `certificate_`, `grad_map_`, `n_iter_`, `mean_`,
`n_features_in_` (and `feature_names_in_` for a DataFrame). `set_output(transform="pandas")`
works through scikit-learn's mixin; output feature names are `nsaflow0`, `nsaflow1`, ...
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._fit import nsa_flow_fit


class NSAFlow(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """NSA-Flow as a scikit-learn transformer.

    Parameters: `n_components` (k, default 6), `w` (0.5), `mode` ("auto": signed for centred
    or signed data, else data; or "data", "signed"), `consolidate`, `optimizer` (None:
    L-BFGS-B; "spg"), `init` ("auto" or a 3.5 init name), `max_iter` (gradient evaluations,
    None: 20000), `tol` (None: 1e-6), `center` (subtract the column means first),
    `sparseness` (None or q in (0, 1)), `orth` (None: the mode's default), `backend`,
    `n_threads`. `n_components` larger than the number of features is an error.
    """

    def __init__(
        self,
        n_components: int = 6,
        w: float = 0.5,
        mode: str = "auto",
        consolidate: bool = False,
        optimizer: str | None = None,
        init: str = "auto",
        max_iter: int | None = None,
        tol: float | None = None,
        center: bool = True,
        sparseness: float | None = None,
        orth: str | None = None,
        backend: str = "auto",
        n_threads: int | None = None,
    ):
        self.n_components = n_components
        self.w = w
        self.mode = mode
        self.consolidate = consolidate
        self.optimizer = optimizer
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.center = center
        self.sparseness = sparseness
        self.orth = orth
        self.backend = backend
        self.n_threads = n_threads

    def fit(self, X: Any, y: Any = None) -> "NSAFlow":
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if self.mode not in ("auto", "data", "nonneg", "signed", "contrast"):
            raise ValueError(f"mode must be 'auto', 'data' or 'signed' (a data mode), got {self.mode!r}")
        k = self.n_components
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"n_components must be a positive integer, got {k!r}")
        if k > X.shape[1]:
            raise ValueError(f"n_components={k} must be at most the number of features ({X.shape[1]})")
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0) if self.center else np.zeros(X.shape[1])
        Xc = X - self.mean_
        res = nsa_flow_fit(
            Xc, int(k), self.w, mode=self.mode, consolidate=self.consolidate,
            optimizer=self.optimizer, init=self.init, max_iter=self.max_iter, tol=self.tol,
            sparseness=self.sparseness, orth=self.orth, backend=self.backend,
            n_threads=self.n_threads,
        )
        self.result_ = res
        self.components_ = np.ascontiguousarray(res.Y.T)
        self.converged_ = bool(res.converged)
        self.certificate_ = res.certificate
        self.grad_map_ = float(res.grad_map)
        self.n_iter_ = int(res.iters)
        self._n_features_out = self.components_.shape[0]
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return (np.asarray(X, dtype=np.float64) - self.mean_) @ self.components_.T

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
