"""A grid (w × folds × bootstraps) over joblib and over a Dask LocalCluster with worker
processes: every result equal, bit for bit, to the local solve."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import nsa_flow_rs as nf
from nsa_flow_rs.parallel import grid, solve_cell


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((40, 8)))
    cells = grid(x.shape[0], [0.3, 0.7], n_folds=2, n_bootstraps=2, seed=1)
    local = [solve_cell(x, c, k=2) for c in cells]
    return x, cells, local


def same(a, b):
    return np.array_equal(a.Y, b.Y) and a.n_grad == b.n_grad and a.energy == b.energy and a.cell == b.cell


def test_grid_cells():
    cells = grid(10, [0.1, 0.5, 0.9], n_folds=5, n_bootstraps=3, seed=0)
    assert len(cells) == 3 * 5 * 3
    assert {c.w for c in cells} == {0.1, 0.5, 0.9}
    assert all(c.rows.size == 8 for c in cells)
    assert grid(10, [0.5], n_folds=5, seed=0) == grid(10, [0.5], n_folds=5, seed=0)
    assert grid(10, 0.5)[0].rows.tolist() == list(range(10))
    with pytest.raises(nf.InvalidParameterError):
        grid(3, [0.5], n_folds=4)


def test_results_pickle(setup):
    _, _, local = setup
    for r in local:
        assert same(pickle.loads(pickle.dumps(r)), r)


def test_joblib_processes(setup):
    joblib = pytest.importorskip("joblib")
    x, cells, local = setup
    got = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(solve_cell)(x, c, k=2) for c in cells)
    assert len(got) == len(local) and all(same(a, b) for a, b in zip(got, local))


def test_dask_local_cluster_processes(setup):
    distributed = pytest.importorskip("dask.distributed")
    x, cells, local = setup
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        xf = client.scatter(x, broadcast=True)
        got = client.gather(client.map(solve_cell, [xf] * len(cells), cells, k=2, pure=False))
        # an error on a worker comes back as the same ValueError subclass
        bad = client.submit(solve_cell, xf, cells[0], k=2, orth="E")
        with pytest.raises(nf.UnknownNameError):
            bad.result()
    assert len(got) == len(local) and all(same(a, b) for a, b in zip(got, local))
