"""Spreading many solves (a grid of w × folds × bootstraps) over joblib or Dask.

Every solve is independent and deterministic, and its inputs, parameters and results
(`NSAResult`, the 0.7.7 result dicts, the exceptions) pickle, so any executor works. The
helpers below make the grid and solve one cell of it; a cell solved in another process gives
bit for bit the result of solving it here. Each worker process runs single-threaded solves by
default; pass `n_threads` to give each more.

joblib::

    from joblib import Parallel, delayed
    from nsa_flow_rs.parallel import grid, solve_cell
    cells = grid(n_samples=X.shape[0], ws=[0.25, 0.5, 0.75], n_folds=5, n_bootstraps=10, seed=0)
    results = Parallel(n_jobs=4)(delayed(solve_cell)(X, c, k=3) for c in cells)

Dask (a distributed cluster, here a local one with worker processes)::

    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1) as cluster, Client(cluster) as client:
        xf = client.scatter(X, broadcast=True)
        futures = client.map(solve_cell, [xf] * len(cells), cells, k=3)
        results = client.gather(futures)

`results[i]` belongs to `cells[i]` (its `w`, `fold`, `bootstrap`, and the `rows` it was fitted on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import InvalidParameterError
from ._fit import NSAResult, nsa_flow_fit


@dataclass(frozen=True)
class Cell:
    """One solve of a grid: weight `w`, fold index, bootstrap index, and the sample rows."""

    w: float
    fold: int
    bootstrap: int
    rows: np.ndarray

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Cell) and (self.w, self.fold, self.bootstrap) == (other.w, other.fold, other.bootstrap)
                and np.array_equal(self.rows, other.rows))

    __hash__ = None  # type: ignore[assignment]


def grid(n_samples: int, ws: Any, n_folds: int = 1, n_bootstraps: int = 0, seed: int = 0) -> list[Cell]:
    """The cells of w × folds × bootstraps. Folds: the training rows of a `n_folds`-fold split
    of a permutation drawn with `seed` (all rows when `n_folds = 1`). Bootstraps: for each fold,
    `n_bootstraps` resamples with replacement of its training rows (`0`: the fold itself,
    bootstrap index -1)."""
    if n_samples < 2 or n_folds < 1 or n_bootstraps < 0 or n_folds > n_samples:
        raise InvalidParameterError(
            f"grid needs n_samples >= 2, 1 <= n_folds <= n_samples, n_bootstraps >= 0 "
            f"(got {n_samples}, {n_folds}, {n_bootstraps})")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_samples)
    chunks = np.array_split(perm, n_folds)
    cells = []
    for f in range(n_folds):
        train = np.sort(np.concatenate([c for i, c in enumerate(chunks) if i != f])) if n_folds > 1 else np.arange(n_samples)
        samples = [(-1, train)] if n_bootstraps == 0 else [
            (b, np.sort(rng.choice(train, size=train.size, replace=True))) for b in range(n_bootstraps)]
        for w in np.atleast_1d(np.asarray(ws, dtype=float)):
            for b, rows in samples:
                cells.append(Cell(float(w), f, b, rows))
    return cells


def solve_cell(X: Any, cell: Cell, k: int, mode: str = "auto", **kwargs: Any) -> NSAResult:
    """The 3.5 solve `nsa_flow(X[cell.rows], k, cell.w, mode=mode, **kwargs)`; the result also
    carries `cell`."""
    x = np.asarray(X)[cell.rows]
    r = nsa_flow_fit(x, k, cell.w, mode=mode, **kwargs)
    r.cell = cell
    return r
