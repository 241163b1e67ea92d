#!/usr/bin/env python3
"""Extra golden cases for nsa-flow's reference mode, produced by the real reference.

What it does
------------
Runs the Python reference ``nsa_flow.core.nsa_flow`` (PyPI ``nsa_flow==0.7.7``) on a fixed set of
cases that the main golden set (``../shared/golden/flow``) does not cover, and writes each case to
``flow/<case>/`` NEXT TO THIS SCRIPT, in exactly the layout of ``golden/flow/<case>/``:

  params.json         the arguments passed (w, retraction, optimizer, max_iter, tol and whichever
                      of apply_nonneg / simplified / project_full_gradient / record_every /
                      window_size / initial_learning_rate the case sets), p, k, dtype, X0_is_None,
                      and "defaults_of_unset_args": the default of every other result-affecting
                      argument (seed, apply_nonneg, initial_learning_rate, record_every,
                      window_size, simplified, project_full_gradient, precision). verbose,
                      c1_armijo (unused by the reference loop) and device are always left at
                      their defaults and not listed, as in the main golden set.
  Y0.npy, X0.npy      the inputs as passed (X0.npy absent when X0=None)
  Y_start.npy         the iterate the loop starts from (for X0=None: Y0 plus the reference's 5 %
                      perturbation drawn from torch's global RNG after torch.manual_seed(seed));
                      reproduced independently here and checked bit-for-bit against the start
                      the reference actually used (captured by wrapping ``defect_fast``, whose
                      first call in nsa_flow is ``d0 = defect_fast(Y)`` on the start)
  target_X0_used.npy  the returned ``target`` (X0 after the clamp, or the X0=None substitute)
  traces.csv          iter,fidelity,orthogonality,total_energy; one row per recorded iteration,
                      floats written with repr() (they round-trip exactly)
  Y_out.npy           the returned (best) Y
  outputs.json        best_total_energy, best_Y_iteration, final_iter (= number of trace rows, as
                      the reference defines it), iterations_run (loop iterations actually
                      executed: counted by wrapping the module's ``time`` so that each call of
                      ``time.time()`` is counted -- nsa_flow calls it once before the loop and
                      exactly once per completed iteration), the scaling constants g0 / d0 /
                      fid_eta / c_orth (recomputed with the reference's formulas), lr_initial,
                      defects, sparsity, dtype, threads, wall time. float32 cases also record the
                      float64 re-run used to check that they are not near-tie sensitive.

All arrays are little-endian, C order (np.save): float64, or float32 for the float32 cases (the
reference ignores its ``precision`` argument and runs in the dtype of its inputs).

Requirements
------------
Python 3.9+, numpy, torch (CPU build is enough; generated with torch 2.15.0), torch-optimizer 0.3.0,
pandas and matplotlib (imported by nsa_flow.core), and nsa_flow 0.7.7 itself, importable as
``nsa_flow`` -- e.g. ``pip install nsa_flow==0.7.7 torch-optimizer==0.3.0`` or an unpacked wheel whose
folder is given in the environment variable ``NSA_FLOW_REF_PATH`` (prepended to sys.path).

Run
---
    NSA_FLOW_REF_PATH=/path/to/unpacked/wheel python3 generate.py          # all cases
    python3 generate.py pfg_nonneg_50x10 k1_soft_nonneg_30x1                 # only some

It uses one torch thread, is deterministic (inputs come from torch.Generator().manual_seed(..)),
takes a few seconds in total, and overwrites ``flow/<case>/``. Every case is run twice and must
reproduce itself bit-for-bit.
"""

import inspect
import json
import math
import os
import sys
import time as _time_module
import types

if os.environ.get("NSA_FLOW_REF_PATH"):
    sys.path.insert(0, os.environ["NSA_FLOW_REF_PATH"])

import numpy as np
import torch

import nsa_flow.core as C

torch.set_num_threads(1)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "flow")

# Result-affecting nsa_flow arguments, in the order the main golden set lists them.
ARG_ORDER = ["w", "retraction", "optimizer", "max_iter", "tol", "apply_nonneg", "simplified",
             "project_full_gradient", "record_every", "window_size", "initial_learning_rate"]
DEFAULT_ORDER = ["seed", "apply_nonneg", "initial_learning_rate", "record_every", "window_size",
                 "simplified", "project_full_gradient", "precision"]
SIG_DEFAULTS = {n: p.default for n, p in inspect.signature(C.nsa_flow).parameters.items()
                if p.default is not inspect.Parameter.empty}


# ----------------------------------------------------------------------------- inputs
def inputs(seed, p, k, kind="pair", dtype=torch.float64):
    """Deterministic inputs from a private generator (never the global RNG).

    kind: "pair"  -> Y0, X0 independent standard normals
          "none"  -> Y0 standard normal, X0 = None
          "equal" -> Y0 = X0 = |standard normal| (the same values, distinct tensors)
    Values are drawn in float64 and cast, so a float32 case and its float64 check share data.
    """
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(p, k, generator=g, dtype=torch.float64)
    if kind == "none":
        return A.to(dtype), None
    if kind == "equal":
        A = A.abs().to(dtype)
        return A, A.clone()
    B = torch.randn(p, k, generator=g, dtype=torch.float64)
    return A.to(dtype), B.to(dtype)


# ----------------------------------------------------------------------------- cases
# name, input spec (seed, p, k, kind[, dtype]), the nsa_flow arguments set, and what it covers.
F32 = torch.float32
CASES = [
    ("pfg_nonneg_50x10", (101, 50, 10, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=200, tol=1e-8,
          project_full_gradient=True),
     "project_full_gradient=True with hard non-negativity, default lr (1e-3)"),
    ("pfg_signed_50x10", (102, 50, 10, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=80, tol=1e-8,
          apply_nonneg=False, project_full_gradient=True),
     "project_full_gradient=True, signed, default lr (1.0); lr 1 makes this trajectory amplify "
     "rounding (~x2 per 12 iterations after iter 50), so it stops at 80 to stay within 1e-9"),
    ("pfg_simplified_nonneg_40x6", (103, 40, 6, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=100, tol=1e-8,
          simplified=True, project_full_gradient=True, initial_learning_rate=1e-4),
     "project_full_gradient=True together with simplified=True (off-diagonal Gram penalty)"),
    ("rec3_win7_50x10", (104, 50, 10, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=200, tol=1e-8,
          record_every=3, window_size=7),
     "record_every=3 (final_iter = rows != iterations) and window_size=7"),
    ("win1_defaulttol_50x10", (105, 50, 10, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=50, tol=1e-5,
          window_size=1),
     "window_size=1: the one-energy window has zero range, so the plateau test stops at iter 1"),
    ("win1_tol0_50x10", (105, 50, 10, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=40, tol=0.0,
          window_size=1),
     "window_size=1 with tol=0 (0 < 0 is false): runs to max_iter"),
    ("polar_nonneg_50x10", (106, 50, 10, "pair"),
     dict(w=0.5, retraction="polar", optimizer="fast", max_iter=150, tol=1e-8),
     "polar retraction with non-negativity, default lr"),
    ("polar_nonneg_lr05_50x10", (106, 50, 10, "pair"),
     dict(w=0.5, retraction="polar", optimizer="fast", max_iter=100, tol=1e-8,
          initial_learning_rate=0.5),
     "polar retraction with non-negativity, lr 0.5"),
    ("w0_nonneg_50x10", (107, 50, 10, "pair"),
     dict(w=0.0, retraction="soft_polar", optimizer="fast", max_iter=100, tol=1e-8),
     "w=0: c_orth = 0, the retraction is the identity, pure fidelity"),
    ("w1_nonneg_50x10", (108, 50, 10, "pair"),
     dict(w=1.0, retraction="soft_polar", optimizer="fast", max_iter=100, tol=1e-8),
     "w=1: fid_eta = 0, full polar blend, pure orthogonality"),
    ("wide_soft_nonneg_6x9", (109, 6, 9, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=100, tol=1e-8),
     "k > p (wide): soft_polar with a singular Gram matrix (eps-regularised eig)"),
    ("wide_polar_nonneg_6x9", (110, 6, 9, "pair"),
     dict(w=0.5, retraction="polar", optimizer="fast", max_iter=60, tol=1e-8),
     "k > p (wide): polar retraction (economy SVD of a wide matrix)"),
    ("wide_none_signed_6x9", (111, 6, 9, "pair"),
     dict(w=0.5, retraction="none", optimizer="fast", max_iter=60, tol=1e-8,
          apply_nonneg=False),
     "k > p (wide): no retraction, signed, lr 1"),
    ("x0none_signed_50x10", (112, 50, 10, "none"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=100, tol=1e-8,
          apply_nonneg=False),
     "X0=None without non-negativity: target = Y0, start = Y0 + 5 % torch noise"),
    ("ns_k130_150x130", (113, 150, 130, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=30, tol=1e-8),
     "k=130 > eig_thresh=128: the Newton-Schulz inverse square root (4 iterations)"),
    ("lr20_nonneg_50x10", (114, 50, 10, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=100, tol=0.0,
          initial_learning_rate=20.0),
     "lr 20: heavy backtracking and the 0.95 lr decay"),
    ("y0eqx0_nonneg_50x10", (115, 50, 10, "equal"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=60, tol=0.0),
     "Y0 == X0 (non-negative): backtracking exhausts (20 halvings) and reverts to best Y repeatedly"),
    ("k1_soft_nonneg_30x1", (116, 30, 1, "pair"),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=60, tol=1e-8),
     "k=1: zero orthogonality defect, 1x1 Gram"),
    ("sgdp_pfg_signed_50x10", (117, 50, 10, "pair"),
     dict(w=0.6, retraction="soft_polar", optimizer="sgdp", max_iter=40, tol=1e-8,
          apply_nonneg=False, project_full_gradient=True, initial_learning_rate=0.05),
     "sgdp optimizer with project_full_gradient=True, signed"),
    ("f32_pfg_nonneg_40x6", (118, 40, 6, "pair", F32),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=60, tol=1e-8,
          project_full_gradient=True),
     "float32 inputs, project_full_gradient, non-negativity"),
    ("f32_x0none_signed_40x6", (119, 40, 6, "none", F32),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=60, tol=1e-8,
          apply_nonneg=False),
     "float32 inputs, X0=None, signed"),
    ("f32_soft_nonneg_lr001_60x8", (120, 60, 8, "pair", F32),
     dict(w=0.5, retraction="soft_polar", optimizer="fast", max_iter=80, tol=0.0,
          initial_learning_rate=0.01),
     "float32 inputs, soft_polar, non-negativity, lr 0.01, tol 0"),
]


# ----------------------------------------------------------------------------- running
def expected_start(Y0, X0, seed):
    """The loop's starting iterate, reproduced exactly as the reference computes it."""
    if X0 is not None:
        return Y0.clone()
    torch.manual_seed(seed)
    Y = Y0.clone()
    scale = torch.norm(Y) / (Y.numel() ** 0.5) * 0.05
    return Y + scale * torch.randn_like(Y)


def run_instrumented(Y0, X0, kw):
    """Runs C.nsa_flow, returning (result, start used, iterations run, wall seconds)."""
    counter = {"time": 0}
    captured = []
    orig_time, orig_defect = C.time, C.defect_fast

    def counting_time():
        counter["time"] += 1
        return _time_module.time()

    def capturing_defect(V):
        if not captured:
            captured.append(V.detach().clone())
        return orig_defect(V)

    C.time = types.SimpleNamespace(time=counting_time)
    C.defect_fast = capturing_defect
    try:
        t = _time_module.perf_counter()
        r = C.nsa_flow(Y0.clone(), None if X0 is None else X0.clone(), **kw)
        wall = _time_module.perf_counter() - t
    finally:
        C.time, C.defect_fast = orig_time, orig_defect
    # one time.time() for t0, one per completed iteration
    return r, captured[0], counter["time"] - 1, wall


def scaling(Ystart, target, w):
    p, k = Ystart.shape
    g0 = torch.clamp(0.5 * torch.sum((Ystart - target) ** 2) / (p * k), min=1e-8)
    d0 = torch.clamp(C.defect_fast(Ystart), min=1e-8)
    return dict(g0=g0.item(), d0=d0.item(), fid_eta=((1 - w) / (g0 * p * k)).item(),
                c_orth=(4 * w / d0).item())


def trace_rows(traces):
    cols = ["iter", "fidelity", "orthogonality", "total_energy"]
    return [[int(r["iter"])] + [float(r[c]) for c in cols[1:]] for _, r in traces.iterrows()]


def save(path, t, dtype):
    a = t.detach().cpu().numpy().astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    np.save(path, np.ascontiguousarray(a))


def run_case(name, spec, kw, about):
    seed_in, p, k, kind = spec[:4]
    dtype = spec[4] if len(spec) > 4 else torch.float64
    npdt = "float32" if dtype == torch.float32 else "float64"
    Y0, X0 = inputs(seed_in, p, k, kind, dtype)
    seed = kw.get("seed", SIG_DEFAULTS["seed"])

    r, start_used, iters, wall = run_instrumented(Y0, X0, kw)
    start = expected_start(Y0, X0, seed)
    assert torch.equal(start_used, start), f"{name}: reproduced start differs from the one used"
    # determinism: a second run must agree bit for bit
    r2, _, iters2, wall2 = run_instrumented(Y0, X0, kw)
    wall = min(wall, wall2)  # the first call may include one-off warm-up (e.g. torch.optim)
    assert iters2 == iters and torch.equal(r2["Y"], r["Y"]), f"{name}: not deterministic"
    rows = trace_rows(r["traces"])
    re = kw.get("record_every", 1)
    assert r["final_iter"] == len(rows) == iters // re, (name, r["final_iter"], len(rows), iters)
    assert [row[0] for row in rows] == [re * (i + 1) for i in range(len(rows))]

    out = {
        "best_total_energy": r["best_total_energy"],
        "best_Y_iteration": int(r["best_Y_iteration"]),
        "final_iter": int(r["final_iter"]),
        "iterations_run": iters,
        **scaling(start, r["target"], kw["w"]),
        "lr_initial": ((1e-3 if kw.get("apply_nonneg", True) else 1.0)
                       if kw.get("initial_learning_rate", "default") == "default"
                       else float(kw["initial_learning_rate"])),
        "defect_Y0": C.defect_fast(Y0).item(),
        "defect_Y_out": C.defect_fast(r["Y"]).item(),
        "zeros_frac_Y_out": (r["Y"] == 0).double().mean().item(),
        "out_dtype": str(r["Y"].dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "wall_s": wall,
        "covers": about,
    }
    if dtype == torch.float32:
        # not near-tie sensitive: the same run in float64 takes the same path
        Y64 = Y0.double()
        X64 = None if X0 is None else X0.double()
        r64, _, iters64, _ = run_instrumented(Y64, X64, kw)
        rows64 = trace_rows(r64["traces"])
        worst = max((abs(a[3] - b[3]) / max(abs(b[3]), 1e-3) for a, b in zip(rows, rows64)),
                    default=0.0)
        out["float64_check"] = {"iterations_run": iters64,
                                "best_Y_iteration": int(r64["best_Y_iteration"]),
                                "final_iter": int(r64["final_iter"]),
                                "worst_total_energy_rel_diff_f32_vs_f64": worst}
        assert iters64 == iters and int(r64["best_Y_iteration"]) == out["best_Y_iteration"], \
            f"{name}: float32 and float64 runs disagree ({iters}/{out['best_Y_iteration']} vs " \
            f"{iters64}/{r64['best_Y_iteration']}): near-tie sensitive, do not use"

    params = {key: kw[key] for key in ARG_ORDER if key in kw}
    params.update(p=p, k=k, dtype=npdt, X0_is_None=X0 is None)
    params["defaults_of_unset_args"] = {key: SIG_DEFAULTS[key] for key in DEFAULT_ORDER
                                        if key not in kw}

    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    with open(os.path.join(d, "params.json"), "w") as fh:
        json.dump(params, fh, indent=1)
    save(os.path.join(d, "Y0.npy"), Y0, npdt)
    if X0 is not None:
        save(os.path.join(d, "X0.npy"), X0, npdt)
    save(os.path.join(d, "Y_start.npy"), start, npdt)
    save(os.path.join(d, "target_X0_used.npy"), r["target"], npdt)
    save(os.path.join(d, "Y_out.npy"), r["Y"], npdt)
    with open(os.path.join(d, "traces.csv"), "w") as fh:
        fh.write("iter,fidelity,orthogonality,total_energy\n")
        for row in rows:
            fh.write(f"{row[0]},{row[1]!r},{row[2]!r},{row[3]!r}\n")
    with open(os.path.join(d, "outputs.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"{name:28s} iters {iters:4d} rows {len(rows):4d} best_it {out['best_Y_iteration']:4d} "
          f"bestE {out['best_total_energy']:.6g}  {wall:.3f}s")


def main(argv):
    want = set(argv)
    unknown = want - {c[0] for c in CASES}
    if unknown:
        sys.exit(f"unknown case(s): {sorted(unknown)}")
    for name, spec, kw, about in CASES:
        if not want or name in want:
            run_case(name, spec, kw, about)


if __name__ == "__main__":
    main(sys.argv[1:])
