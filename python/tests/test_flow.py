"""The 0.7.7 API: nsa_flow, nsa_flow_autograd, nsa_flow_retract_auto, the defects, batch,
plot_nsa_trace; inputs of every dtype/order/stride; results equal to the Rust CLI."""

from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest

import nsa_flow_rs as nf
from conftest import cli

REF_KEYS = {"Y", "traces", "final_iter", "best_total_energy", "best_Y_iteration", "target"}


def problem(rng, p=40, k=5):
    x = np.abs(rng.standard_normal((p, k)))
    return x + 0.05 * rng.standard_normal((p, k)), x


def test_reference_keys_and_types(rng):
    y0, x0 = problem(rng)
    r = nf.nsa_flow(y0, x0, w=0.5, max_iter=30)
    assert REF_KEYS <= set(r)
    assert isinstance(r["Y"], np.ndarray) and r["Y"].shape == y0.shape and r["Y"].dtype == np.float64
    assert r["final_iter"] == len(r["traces"]) and r["final_iter"] >= 1
    assert list(r["traces"].keys()) == ["iter", "time", "fidelity", "orthogonality", "total_energy"]
    assert (r["Y"] >= 0).all()
    assert r["mode"] == "corrected"
    # the corrected solver's accepted energies never increase
    e = np.asarray(r["traces"]["total_energy"])
    assert np.all(np.diff(e) <= 1e-15 * np.abs(e[:-1]))
    assert r["best_total_energy"] == pytest.approx(e.min())


def test_modes_differ_and_reference_mode_runs(rng):
    y0, x0 = problem(rng)
    a = nf.nsa_flow(y0, x0, 0.5, max_iter=40, mode="reference")
    b = nf.nsa_flow(y0, x0, 0.5, max_iter=40, mode="corrected")
    assert a["mode"] == "reference" and b["mode"] == "corrected"
    assert not np.array_equal(a["Y"], b["Y"])


def test_every_option_is_passed(rng):
    y0, x0 = problem(rng)
    base = nf.nsa_flow(y0, x0, 0.5, max_iter=40, tol=0.0, mode="reference")
    changed = {
        "retraction": "polar", "apply_nonneg": False, "optimizer": "adam",
        "initial_learning_rate": 0.1, "simplified": True, "project_full_gradient": True,
        "precision": "float32",
    }
    for k, v in changed.items():
        r = nf.nsa_flow(y0, x0, 0.5, max_iter=40, tol=0.0, mode="reference", **{k: v})
        assert not np.array_equal(r["Y"], base["Y"]) or r["iterations"] != base["iterations"], k
    w2 = nf.nsa_flow(y0, x0, 0.5, max_iter=400, tol=1e-4, mode="reference", window_size=2)
    w9 = nf.nsa_flow(y0, x0, 0.5, max_iter=400, tol=1e-4, mode="reference", window_size=9)
    assert w2["iterations"] != w9["iterations"]
    r = nf.nsa_flow(y0, x0, 0.5, max_iter=40, tol=0.0, mode="reference", record_every=4)
    assert r["final_iter"] == len(r["traces"]) == 10
    assert list(r["traces"]["iter"][:2]) == [4, 8]
    assert nf.nsa_flow(y0, x0, 0.5, max_iter=7, tol=0.0, mode="reference")["iterations"] == 7
    # seed: only the X0=None perturbation
    s1 = nf.nsa_flow(y0, None, 0.5, max_iter=5, seed=1)
    s2 = nf.nsa_flow(y0, None, 0.5, max_iter=5, seed=2)
    assert not np.array_equal(s1["start"], s2["start"])
    # perturbed_start replaces the drawn start
    ps = np.abs(y0) + 0.01
    r = nf.nsa_flow(y0, None, 0.5, max_iter=5, perturbed_start=ps, mode="reference")
    assert np.array_equal(r["start"], ps)
    # c1_armijo: unused by the reference (accepted in reference mode), refused in corrected
    nf.nsa_flow(y0, x0, 0.5, max_iter=3, mode="reference", c1_armijo=0.5)
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow(y0, x0, 0.5, max_iter=3, c1_armijo=0.5)


def test_verbose_prints_one_line_per_iteration(rng, capsys):
    y0, x0 = problem(rng)
    r = nf.nsa_flow(y0, x0, 0.5, max_iter=6, tol=0.0, verbose=True, mode="reference")
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[NSA-Flow]")]
    assert len(lines) == r["iterations"] == 6


@pytest.mark.parametrize("kind", ["f64c", "f64f", "f32", "int", "strided", "bigendian", "list", "memmap"])
def test_inputs_of_any_layout_give_the_same_result(rng, tmp_path, kind):
    y0, x0 = problem(rng)
    x0 = np.round(x0 * 4)  # exactly representable in every dtype below
    y0 = x0.copy()
    want = nf.nsa_flow(y0, x0, 0.5, max_iter=20)["Y"]
    if kind == "f64c":
        a = np.ascontiguousarray(y0)
    elif kind == "f64f":
        a = np.asfortranarray(y0)
    elif kind == "f32":
        a = y0.astype(np.float32)
    elif kind == "int":
        a = y0.astype(np.int32)
    elif kind == "strided":
        big = np.zeros((y0.shape[0] * 2, y0.shape[1] * 3))
        big[::2, ::3] = y0
        a = big[::2, ::3]
        assert not a.flags.c_contiguous and not a.flags.f_contiguous
    elif kind == "bigendian":
        a = y0.astype(">f8")
    elif kind == "list":
        a = y0.tolist()
    else:
        np.save(tmp_path / "y.npy", y0)
        a = np.load(tmp_path / "y.npy", mmap_mode="r")
        assert not a.flags.writeable
    got = nf.nsa_flow(a, x0, 0.5, max_iter=20)["Y"]
    assert np.array_equal(got, want)


def test_bad_inputs_raise_value_error_subclasses(rng):
    y0, x0 = problem(rng)
    nan = y0.copy()
    nan[3, 2] = np.nan
    cases = [
        (nf.NonFiniteError, lambda: nf.nsa_flow(nan, x0)),
        (nf.NonFiniteError, lambda: nf.nsa_flow(y0, np.where(x0 > 1, np.inf, x0))),
        (nf.ShapeError, lambda: nf.nsa_flow(y0, x0[:-1])),
        (nf.ShapeError, lambda: nf.nsa_flow(y0[0], x0)),
        (nf.ShapeError, lambda: nf.nsa_flow(np.zeros((0, 3)), None)),
        (nf.ShapeError, lambda: nf.nsa_flow(y0.astype(complex), x0)),
        (nf.ShapeError, lambda: nf.nsa_flow(np.array([["a"]]), None)),
        (nf.ShapeError, lambda: nf.nsa_flow(rng.random((3, 5)), None)),  # k > p, corrected
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, w=1.5)),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, w=-0.1)),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, w=float("nan"))),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, max_iter=0)),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, max_iter=-3)),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, tol=-1.0)),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, initial_learning_rate=-1.0)),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, n_threads=0)),
        (nf.UnknownNameError, lambda: nf.nsa_flow(y0, x0, retraction="spline")),
        (nf.UnknownNameError, lambda: nf.nsa_flow(y0, x0, optimizer="nope")),
        (nf.UnknownNameError, lambda: nf.nsa_flow(y0, x0, mode="fast")),
        (nf.UnknownNameError, lambda: nf.nsa_flow(y0, x0, backend="tpu")),
        (nf.UnknownNameError, lambda: nf.nsa_flow(y0, x0, precision="float16")),
        (nf.UnknownNameError, lambda: nf.nsa_flow(y0, x0, apply_nonneg="maybe")),
        (nf.UnknownNameError, lambda: nf.nsa_flow(y0, x0, device="tpu")),
        (nf.InvalidParameterError, lambda: nf.nsa_flow(y0, x0, device="cpu", backend="gpu")),
        (nf.NsaFlowError, lambda: nf.nsa_flow(y0, x0, optimizer="padam")),
    ]
    for exc, f in cases:
        with pytest.raises(exc) as e:
            f()
        assert isinstance(e.value, ValueError) and str(e.value)


def test_errors_pickle(rng):
    with pytest.raises(nf.InvalidParameterError) as e:
        nf.nsa_flow(np.ones((4, 2)), None, w=3)
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is nf.InvalidParameterError and str(again) == str(e.value)


def test_n_threads_gives_the_same_bits(rng):
    y0, x0 = problem(rng)
    a = nf.nsa_flow(y0, x0, 0.5, max_iter=30)
    b = nf.nsa_flow(y0, x0, 0.5, max_iter=30, n_threads=2)
    assert np.array_equal(a["Y"], b["Y"])


def test_same_result_as_the_rust_cli(rng, tmp_path):
    exe = cli()
    y0, x0 = problem(rng, 60, 6)
    np.save(tmp_path / "y0.npy", y0)
    np.save(tmp_path / "x0.npy", x0)
    for mode in ("corrected", "reference"):
        subprocess.run(
            [str(exe), "run", "--y0", str(tmp_path / "y0.npy"), "--x0", str(tmp_path / "x0.npy"),
             "--w", "0.7", "--max-iter", "80", "--mode", mode, "--backend", "cpu", "--quiet",
             "--out", str(tmp_path / f"y_{mode}.npy"), "--summary", str(tmp_path / f"s_{mode}.json")],
            check=True,
        )
        r = nf.nsa_flow(y0, x0, 0.7, max_iter=80, mode=mode, backend="cpu")
        assert np.array_equal(r["Y"], np.load(tmp_path / f"y_{mode}.npy"))
        s = json.loads((tmp_path / f"s_{mode}.json").read_text())
        assert s["iterations"] == r["iterations"] and s["best_iteration"] == r["best_Y_iteration"]
        assert s["stop_reason"] == r["stop_reason"]


def test_retract_defects_and_cli(rng, tmp_path):
    y = rng.standard_normal((30, 4))
    d = nf.invariant_orthogonality_defect(y)
    s = y.T @ y
    assert d == pytest.approx((np.sum(s * s) - np.sum(np.diag(s) ** 2)) / np.sum(y * y) ** 2, rel=1e-12)
    assert nf.defect_fast(y) == pytest.approx(d, rel=1e-14)
    assert nf.invariant_orthogonality_defect(np.zeros((3, 2))) == 0.0
    q = nf.nsa_flow_retract_auto(y, 1.0, "polar")
    assert nf.invariant_orthogonality_defect(q) < 1e-20
    r = nf.nsa_flow_retract_auto(y, 0.5, "soft_polar")
    assert 0 < nf.invariant_orthogonality_defect(r) < d
    assert np.array_equal(nf.nsa_flow_retract_auto(y, 0.5, None), y)
    assert np.array_equal(nf.nsa_flow_retract_auto(y, 0.0), y)
    ns = nf.nsa_flow_retract_auto(y, 0.5, inv_method="ns", ns_iter=2)
    assert not np.array_equal(ns, r)
    corr = nf.nsa_flow_retract_auto(y, 0.5, mode="corrected")
    assert not np.array_equal(corr, r)
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow_retract_auto(y, 0.5, "cayley")
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow_retract_auto(y, 0.5, inv_method="chol")
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow_retract_auto(y, 0.5, verbose=True)
    exe = cli()
    np.save(tmp_path / "y.npy", y)
    subprocess.run([str(exe), "retract", str(tmp_path / "y.npy"), "--w", "0.5", "--out",
                    str(tmp_path / "r.npy")], check=True, capture_output=True)
    assert np.array_equal(np.load(tmp_path / "r.npy"), r)


def test_autograd(rng):
    y0, x0 = problem(rng, 30, 4)
    r = nf.nsa_flow_autograd(y0, x0, 0.5, max_iter=25, optimizer="adam", initial_learning_rate=1e-2)
    assert REF_KEYS <= set(r) and r["optimizer"] == "adam" and r["iterations"] <= 25
    r2 = nf.nsa_flow_autograd(y0, x0, 0.5, max_iter=25, optimizer="sgd", initial_learning_rate=1e-2)
    assert not np.array_equal(r["Y"], r2["Y"])
    r3 = nf.nsa_flow_autograd(y0, x0, 0.5, max_iter=10, fidelity_type="basic", orth_type="basic")
    assert r3["Y"].shape == y0.shape
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow_autograd(y0, x0, fidelity_type="fancy")
    with pytest.raises(nf.NsaFlowError):
        nf.nsa_flow_autograd(y0, x0, lr_strategy="guess")


def test_batch_equals_single_solves(rng):
    probs = [problem(rng, 30, 4) for _ in range(3)]
    y0s = np.stack([p[0] for p in probs])
    x0s = np.stack([p[1] for p in probs])
    ws = [0.2, 0.5, 0.8]
    out = nf.nsa_flow_batch(y0s, x0s, ws, max_iter=40, backend="cpu")
    assert len(out) == 3
    for (y0, x0), w, r in zip(probs, ws, out):
        alone = nf.nsa_flow(y0, x0, w, max_iter=40, backend="cpu")
        assert np.array_equal(r["Y"], alone["Y"])
        assert r["iterations"] == alone["iterations"]
    with pytest.raises(nf.ShapeError):
        nf.nsa_flow_batch(y0s, x0s[:2], ws)
    with pytest.raises(nf.ShapeError):
        nf.nsa_flow_batch(y0s, x0s, [0.5, 0.5])
    with pytest.raises(nf.ShapeError):
        nf.nsa_flow_batch(y0s[0], None)
    with pytest.raises(nf.InvalidParameterError):
        nf.nsa_flow_batch(y0s, x0s, [0.5, 2.0, 0.5])
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow_batch(y0s, x0s, 0.5, bogus=1)


def test_batch_verbose_prints_each_problems_iterations(rng, capsys):
    probs = [problem(rng, 30, 4) for _ in range(3)]
    y0s = np.stack([p[0] for p in probs])
    out = nf.nsa_flow_batch(y0s, None, [0.2, 0.5, 0.8], max_iter=4, tol=0.0, mode="reference",
                            backend="cpu", verbose=True)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[NSA-Flow] problem")]
    for i, r in enumerate(out):
        mine = [l for l in lines if l.startswith(f"[NSA-Flow] problem {i:3} | iter")]
        assert len(mine) == r["iterations"] == 4, lines
        # in order within each problem, whatever the interleaving between problems
        assert [int(l.split("| iter")[1].split("|")[0]) for l in mine] == [1, 2, 3, 4]
    with pytest.raises(nf.UnknownNameError):
        nf.nsa_flow_batch(y0s, None, 0.5, perturbed_start=y0s[0])


def test_plot_nsa_trace(rng, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    y0, x0 = problem(rng)
    r = nf.nsa_flow(y0, x0, 0.5, max_iter=10)
    fig = nf.plot_nsa_trace(r["traces"], retraction="soft_polar")
    ax1, ax2 = fig.axes
    assert np.array_equal(ax1.lines[0].get_ydata(), np.asarray(r["traces"]["fidelity"]))
    assert np.array_equal(ax2.lines[0].get_ydata(), np.asarray(r["traces"]["orthogonality"]))
    assert "soft_polar" in ax1.get_title()
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    nf.plot_nsa_trace(r)  # the result dict itself
    with pytest.raises(nf.InvalidParameterError):
        nf.plot_nsa_trace({"iter": [1]})


def test_results_pickle(rng):
    y0, x0 = problem(rng)
    r = nf.nsa_flow(y0, x0, 0.5, max_iter=10)
    back = pickle.loads(pickle.dumps(r))
    assert np.array_equal(back["Y"], r["Y"])


def _stored(r, key):
    return dict.__getitem__(r, key)


def test_traces_table_is_built_when_first_read(rng):
    pd = pytest.importorskip("pandas")
    y0, x0 = problem(rng)
    r = nf.nsa_flow(y0, x0, w=0.5, max_iter=12)
    assert isinstance(r, nf.FlowResult) and isinstance(r, dict)
    rows = _stored(r, "traces")
    assert isinstance(rows, np.ndarray) and rows.shape == (r["final_iter"], 5)
    assert "traces" in r and len(r) == len(list(r.keys()))
    t = r["traces"]
    assert isinstance(t, pd.DataFrame) and _stored(r, "traces") is t and r["traces"] is t
    assert list(t.columns) == ["iter", "time", "fidelity", "orthogonality", "total_energy"]
    assert t["iter"].dtype == np.int64
    assert np.array_equal(t.to_numpy(dtype=float), rows)


@pytest.mark.parametrize("how", ["dict", "splat", "update", "copy", "items", "values", "get", "pop",
                                 "setdefault", "or", "ror", "pickle", "repr", "eq", "json_keys"])
def test_every_way_of_reading_a_result_sees_the_table(rng, how):
    pd = pytest.importorskip("pandas")
    y0, x0 = problem(rng)
    r = nf.nsa_flow(y0, x0, w=0.5, max_iter=8)
    if how == "dict":
        t = dict(r)["traces"]
    elif how == "splat":
        t = {**r}["traces"]
    elif how == "update":
        d = {}
        d.update(r)
        t = d["traces"]
    elif how == "copy":
        t = r.copy()["traces"]
    elif how == "items":
        t = dict(list(r.items()))["traces"]
    elif how == "values":
        t = [v for v in r.values() if isinstance(v, pd.DataFrame)][0]
    elif how == "get":
        t = r.get("traces")
    elif how == "pop":
        t = r.pop("traces")
        assert "traces" not in r
    elif how == "setdefault":
        t = r.setdefault("traces", None)
    elif how == "or":
        t = (r | {"x": 1})["traces"]
    elif how == "ror":
        t = ({"x": 1} | r)["traces"]
    elif how == "pickle":
        back = pickle.loads(pickle.dumps(r))
        assert isinstance(back, nf.FlowResult)
        assert isinstance(_stored(back, "traces"), np.ndarray)  # still lazy on the far side
        assert np.array_equal(back["Y"], r["Y"])
        t = back["traces"]
    elif how == "repr":
        assert "DataFrame" not in repr(type(_stored(r, "traces")))
        repr(r)
        t = _stored(r, "traces")
    elif how == "eq":
        other = r.copy()
        assert r.keys() == other.keys()
        t = _stored(r, "traces")
        r == {}  # noqa: B015 (comparing builds the table)
        t = _stored(r, "traces")
    else:  # json of the scalars, the way people log results
        json.dumps({k: v for k, v in r.items() if isinstance(v, (int, float, str))})
        t = _stored(r, "traces")
    assert isinstance(t, pd.DataFrame), how
    assert len(t) == r.get("final_iter", len(t))


def test_a_replaced_traces_value_stays_replaced(rng):
    y0, x0 = problem(rng)
    r = nf.nsa_flow(y0, x0, w=0.5, max_iter=5)
    r["traces"] = "mine"
    assert r["traces"] == "mine" and dict(r)["traces"] == "mine"
    del r["traces"]
    assert "traces" not in r and r.get("traces") is None
    for how in ("update", "ior"):
        r = nf.nsa_flow(y0, x0, w=0.5, max_iter=5)
        if how == "update":
            r.update(traces="mine")
        else:
            r |= {"traces": "mine"}
        assert r["traces"] == "mine", how
    r.clear()
    assert "traces" not in r and r.get("traces") is None and len(r) == 0
