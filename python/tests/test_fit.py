"""The 3.5 API: nsa_flow's dispatch, nsa_flow_data, nsa_flow_signed, varimax, basis_report,
NSAResult; equal to the Rust CLI's `fit`."""

from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest

import nsa_flow_rs as nf
from conftest import cli


@pytest.fixture
def data(rng):
    z = rng.standard_normal((60, 3))
    load = np.abs(rng.standard_normal((3, 12)))
    return z @ load + 0.1 * rng.standard_normal((60, 12))


def test_dispatch_rules(data, rng):
    pos = np.abs(data)
    r = nf.nsa_flow(pos, 3, 0.5)
    assert isinstance(r, nf.NSAResult) and r.mode == "data" and r.Y.shape == (12, 3)
    assert nf.nsa_flow(data - data.mean(0), 3, 0.5).mode == "signed"
    assert nf.nsa_flow(pos, k=3).mode == "data"
    assert nf.nsa_flow(pos, 3, nonneg=False).mode == "signed"
    assert nf.nsa_flow(pos, 3, signed=True).mode == "signed"
    assert nf.nsa_flow(pos, 3, mode="contrast").mode == "signed"
    target = np.abs(rng.standard_normal((20, 4)))
    a = nf.nsa_flow(target, mode="anchored")
    assert a.mode == "anchored" and a.Y.shape == target.shape and a.target is target
    assert nf.nsa_flow(target, w=0.3, mode="target").w == 0.3
    assert nf.nsa_flow(target, fidelity="anchor").mode == "anchored"  # a 3.5 keyword
    assert isinstance(nf.nsa_flow(target, None, 0.3), dict)  # the 0.7.7 flow
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(pos, 3, mode="reference")
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow(pos, 3, retraction="polar")  # a 0.7.7 keyword on the 3.5 form
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(pos, 3, 0.5, "polar")  # 0.7.7 positionals on the 3.5 form
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow(pos, 3, apply_nonneg=True)
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(pos, 3, fidelity="anchor")  # anchored-only
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(target, 5, mode="anchored")  # k != columns
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(pos, mode="data")  # needs k
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(pos, 0)
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow(pos, 3, orth="E")
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(pos, 3, w=1.2)
    with pytest.raises(nf.NonFiniteError):
        nf.nsa_flow(np.where(pos > 2, np.nan, pos), 3)


def test_result_fields(data):
    r = nf.nsa_flow_data(np.abs(data), 3, 0.5)
    for f in ("Y", "w", "orth", "mode", "optimizer", "energy", "fidelity", "defect", "iters",
              "stop_reason", "grad_map", "tol", "converged", "certificate", "seconds",
              "energy_start", "grad_map_start", "energy_reduction", "basis_report", "matrix_free",
              "n_grad"):
        assert hasattr(r, f), f
    assert r.orth == "D" and r.optimizer == "lbfgsb" and r.converged and r.grad_map <= r.tol
    assert (r.Y >= 0).all() and np.array_equal(r.components, r.Y.T) and r.V is r.Y
    assert r.energy_reduction == pytest.approx(r.energy_start - r.energy)
    assert r.basis_report == nf.basis_report(r.Y)
    back = pickle.loads(pickle.dumps(r))
    assert back == r and "NSAResult(mode='data'" in repr(r)
    s = nf.nsa_flow_signed(data, 2, 0.5)
    assert s.mode == "signed" and s.parts.shape == (12, 4) and s.orth == "Cg"
    assert np.allclose(s.Y, s.parts[:, :2] - s.parts[:, 2:])
    assert "parts_nnz" in s.__dict__ and s.parts_report is not None


def test_options_change_the_result(data):
    pos = np.abs(data)
    base = nf.nsa_flow_data(pos, 3, 0.5)
    for kw in ({"orth": "Cg"}, {"optimizer": "spg"}, {"init": "pca_clamp"}, {"tol": 1e-2},
               {"sparseness": 0.5}, {"max_iter": 5}, {"w": 0.9}, {"matrix_free": True},
               {"init": "random", "seed": 3}, {"memory": 3}):
        r = nf.nsa_flow_data(pos, 3, **({"w": 0.5} | kw) if "w" not in kw else kw)
        assert not np.array_equal(r.Y, base.Y) or r.n_grad != base.n_grad, kw
    assert nf.nsa_flow_data(pos, 3, max_iter=5).n_grad <= 5 + 1
    assert nf.nsa_flow_data(pos, 3, matrix_free=True).matrix_free is True
    start = np.abs(np.random.default_rng(0).random((12, 3)))
    r = nf.nsa_flow_data(pos, 3, init=start)
    assert r.init == "matrix"
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow_data(pos, 3, seed=1)  # no random draw with init='clamp'
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow_data(pos, 3, init="nmf")
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow_data(pos, 3, init="magic")
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow_data(pos, 3, optimizer="adam")
    sc = nf.nsa_flow_signed(data, 2, consolidate=True)
    assert sc.consolidated
    t = np.abs(data[:12, :3])
    a0 = nf.nsa_flow(t, mode="anchored", continuation=3)
    assert len(a0.w_schedule) == 4
    assert nf.nsa_flow(t - 0.5, mode="anchored", nonneg=False).nonneg is False


def test_same_result_as_the_rust_cli(data, tmp_path):
    exe = cli()
    x = np.abs(data)
    np.save(tmp_path / "x.npy", x)
    for mode in ("data", "signed"):
        subprocess.run([str(exe), "fit", "--data", str(tmp_path / "x.npy"), "--k", "3", "--w", "0.6",
                        "--mode", mode, "--backend", "cpu", "--quiet", "--out", str(tmp_path / "v.npy"),
                        "--summary", str(tmp_path / "s.json")], check=True)
        r = nf.nsa_flow(x, 3, 0.6, mode=mode, backend="cpu")
        assert np.array_equal(r.Y, np.load(tmp_path / "v.npy"))
        s = json.loads((tmp_path / "s.json").read_text())
        assert s["n_grad"] == r.n_grad


def np_varimax(phi, iters=500, tol=1e-12):
    h = np.sqrt((phi**2).sum(1))
    a = phi / h[:, None]
    p, k = a.shape
    r, d = np.eye(k), 0.0
    for _ in range(iters):
        lam = a @ r
        u, s, vh = np.linalg.svd(a.T @ (lam**3 - lam @ np.diag((lam**2).sum(0)) / p))
        r, d_old, d = u @ vh, d, s.sum()
        if d_old and d / d_old < 1 + tol:
            break
    return (a @ r) * h[:, None]


def vcrit(l):
    l2 = l**2
    return ((l2 - l2.mean(0)) ** 2).sum()


def test_varimax(rng):
    e = np.linalg.qr(rng.standard_normal((40, 4)))[0] * [3, 2, 1.5, 1]
    v = nf.varimax(e)
    rot = np.linalg.lstsq(e, v, rcond=None)[0]
    assert np.allclose(rot.T @ rot, np.eye(4), atol=1e-10)  # a rotation of E
    want = np_varimax(e)
    # same columns up to sign and order (3.5 stops its iteration at a relative 1e-6)
    for j in range(4):
        c = v[:, j]
        assert min(min(np.abs(c - s * want[:, i]).max() for s in (1, -1)) for i in range(4)) < 5e-3 * np.abs(e).max()
        # 3.5's gauge: each column's dominant L2 lobe non-negative
        assert np.linalg.norm(np.maximum(c, 0)) >= np.linalg.norm(np.minimum(c, 0))
    pos = [np.linalg.norm(np.maximum(v[:, j], 0)) for j in range(4)]
    assert pos == sorted(pos, reverse=True)  # columns by descending positive-lobe norm
    assert vcrit(v / np.sqrt((v**2).sum(1))[:, None]) >= vcrit(e / np.sqrt((e**2).sum(1))[:, None])
    with pytest.raises(nf.NonFiniteError):
        nf.varimax(np.full((3, 2), np.inf))


def test_basis_report(rng):
    y = np.abs(rng.standard_normal((20, 4)))
    y[:5, 0] = 0
    y[:, 3] = 0
    r = nf.basis_report(y)
    s = y.T @ y
    t = np.trace(s)
    k = 4
    raw = (s**2).sum() / t**2 - 1 / k
    assert r["raw_defect"] == pytest.approx(raw, rel=1e-12)
    assert r["defect_D"] == pytest.approx(raw / (1 - 1 / k), rel=1e-12)
    off = (s**2).sum() - (np.diag(s) ** 2).sum()
    assert r["defect_Cg"] == pytest.approx(off / t**2 / (1 - 1 / k), rel=1e-12)
    assert r["effective_rank"] == pytest.approx(k / (k * raw + 1), rel=1e-12)
    assert r["n_dead_columns"] == 1 and r["column_norm_ratio"] == np.inf
    used = np.abs(y) > 1e-8 * np.abs(y).max()
    assert r["sparsity"] == pytest.approx(1 - used.mean())
    assert r["max_support"] == 20 and r["mean_support"] == pytest.approx(used.sum() / k)
    live = used.sum(1)[used.sum(1) > 0]
    assert r["support_overlap"] == pytest.approx(live.mean() - 1)
