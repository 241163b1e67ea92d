"""The golden cases of the real reference (nsa_flow 0.7.7), run through the Python API in
reference mode, with the Rust suite's tolerances (tests/golden.rs, tests/autograd.rs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import nsa_flow_rs as nf
from conftest import flow_cases, golden_roots

CASES = flow_cases()


def test_enough_cases():
    assert len(CASES) >= 30, [str(c) for c in CASES]


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        r = list(csv.reader(f))
    return r[1:]


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(b), 1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.parent.parent.name}/{c.name}")
def test_flow_case(case: Path):
    pj = json.loads((case / "params.json").read_text())
    defaults = pj.get("defaults_of_unset_args", {})
    get = lambda k: pj[k] if k in pj else defaults[k]  # noqa: E731
    f32 = pj["dtype"] == "float32"
    y0 = np.load(case / "Y0.npy")
    kw = dict(
        w=get("w"), retraction=get("retraction"), max_iter=get("max_iter"), tol=get("tol"),
        seed=get("seed"), apply_nonneg=get("apply_nonneg"), optimizer=get("optimizer"),
        initial_learning_rate=get("initial_learning_rate"), record_every=get("record_every"),
        window_size=get("window_size"), simplified=get("simplified"),
        project_full_gradient=get("project_full_gradient"),
        precision="float32" if f32 else "float64", mode="reference", backend="cpu",
    )
    if pj["X0_is_None"]:
        r = nf.nsa_flow(y0, None, perturbed_start=np.load(case / "Y_start.npy"), **kw)
    else:
        r = nf.nsa_flow(y0, np.load(case / "X0.npy"), **kw)
    out = json.loads((case / "outputs.json").read_text())
    e_tol, y_tol = (2e-4, 2e-4) if f32 else (1e-9, 1e-8)
    if "iterations_run" in out:
        assert r["iterations"] == out["iterations_run"]
    assert r["best_Y_iteration"] == out["best_Y_iteration"]
    assert r["final_iter"] == out["final_iter"]
    assert close(r["best_total_energy"], out["best_total_energy"], e_tol)
    want = rows(case / "traces.csv")
    t = r["traces"]
    assert len(want) == len(t["iter"])
    for i, row in enumerate(want):
        assert int(t["iter"][i]) == int(row[0])
        for col, v in zip(("fidelity", "orthogonality", "total_energy"), row[1:4]):
            assert close(float(t[col][i]), float(v), e_tol), (i, col)
    y_ref = np.load(case / "Y_out.npy")
    assert np.linalg.norm(r["Y"] - y_ref) <= y_tol * max(np.linalg.norm(y_ref), 1e-300)
    target = np.load(case / "target_X0_used.npy")
    assert np.linalg.norm(r["target"] - target) <= 1e-12 * max(np.linalg.norm(target), 1e-300)


def autograd_cases() -> list[Path]:
    out = []
    for root in golden_roots():
        d = root / "autograd_runs"
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if (p / "outputs.json").is_file())
    return out


@pytest.mark.parametrize("case", autograd_cases(), ids=lambda c: c.name)
def test_autograd_case(case: Path):
    out = json.loads((case / "outputs.json").read_text())
    p, s = out["params"], out["settings"]
    kw = dict(w=p["w"], max_iter=p["max_iter"], optimizer=s["optimizer"], retraction=s["retraction"],
              fidelity_type=s["fidelity_type"], orth_type=s["orth_type"], tol=1e-12,
              initial_learning_rate=p.get("initial_learning_rate"), mode="reference", backend="cpu")
    if isinstance(p.get("apply_nonneg"), str):
        kw["apply_nonneg"] = p["apply_nonneg"]
    r = nf.nsa_flow_autograd(np.load(case / "Y0.npy"), np.load(case / "X0.npy"), **kw)
    want = rows(case / "traces.csv")
    t = r["traces"]
    assert len(want) == len(t["iter"])
    for i, row in enumerate(want):
        assert int(t["iter"][i]) == int(row[0])
        for col, j in (("fidelity", 2), ("orthogonality", 3), ("total_energy", 4)):
            w = float(row[j])
            got = float(t[col][i])
            rel = abs(got) if w == 0 else abs(got - w) / abs(w)
            assert rel <= 1e-8, (i, col, got, w)
