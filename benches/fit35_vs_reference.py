"""Time nsa-flow's 3.5 solvers against nsa_flow 3.5.0 itself, on one machine in one run.

The shapes and methods are 3.5's own speed protocol (nsa_flow/bench/protocols/speed.py):
X = default_rng(0).standard_normal((n, p)); "NSA nonneg" = data mode, w = 0.5, on
X − min(X, axis=0); "NSA consolidated" = signed mode, w = 0.5, consolidate, on the centred X.
Best of 3 wall-clock fits each; torch on 1 thread, nsa-flow single-threaded (its solver loop is
sequential). nsa-flow's time is the solver's own (the summary's "seconds": from the input in
memory to the result, initialisation included), as 3.5's is (the call, with the tensor made).

    python benches/fit35_vs_reference.py [--bin target/release/nsa-flow] [--shapes full|quick]
Needs: torch, numpy and nsa_flow==3.5.0 (pip install --no-deps nsa_flow==3.5.0).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import nsa_flow

SHAPES = {"quick": [(300, 66, 5), (1000, 500, 5)],
          "full": [(300, 66, 5), (1000, 500, 5), (1500, 1000, 5), (300, 2000, 5), (3000, 2000, 8)]}


def time_ref(X, k, mode, consolidate, reps):
    best, r = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        r = nsa_flow.nsa_flow(torch.tensor(X), k=k, w=0.5, mode=mode, consolidate=consolidate)
        best = min(best, time.perf_counter() - t0)
    return best, r


def time_ours(binary, path, k, mode, consolidate, reps, tmp):
    best, s = float("inf"), None
    for i in range(reps):
        out, summ = os.path.join(tmp, f"V{i}.npy"), os.path.join(tmp, f"s{i}.json")
        cmd = [binary, "fit", "--data", path, "--k", str(k), "--w", "0.5", "--mode", mode,
               "--out", out, "--summary", summ, "--quiet"]
        if consolidate:
            cmd.append("--consolidate")
        subprocess.run(cmd, check=True, env=dict(os.environ, RAYON_NUM_THREADS="1"))
        with open(summ) as f:
            s = json.load(f)
        best = min(best, s["seconds"])
    return best, s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nsa-flow")
    ap.add_argument("--shapes", default="full", choices=sorted(SHAPES))
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    assert nsa_flow.__version__ == "3.5.0"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (n, p, k) in SHAPES[a.shapes]:
            X = np.random.default_rng(0).standard_normal((n, p))
            reps = {"signed": X - X.mean(0), "data": np.clip(X - X.min(0), 0, None)}
            for mode, consolidate in [("data", False), ("signed", True)]:
                Xm = reps[mode]
                path = os.path.join(tmp, f"X_{n}_{p}_{mode}.npy")
                np.save(path, Xm)
                t_ref, r = time_ref(Xm, k, mode, consolidate, a.reps)
                t_us, s = time_ours(a.bin, path, k, mode, consolidate, a.reps, tmp)
                row = dict(shape=f"{n}x{p} k={k}", mode=mode + (" consolidated" if consolidate else ""),
                           ref_s=t_ref, ours_s=t_us, speedup=t_ref / t_us,
                           ref_energy=float(r["energy"]), ours_energy=s["energy"],
                           ref_gmap=float(r["grad_map"]), ours_gmap=s["grad_map"],
                           ref_n_grad=int(r["n_grad"]), ours_n_grad=s["n_grad"],
                           ref_stop=r["stop_reason"], ours_stop=s["stop_reason"])
                rows.append(row)
                print(f"{row['shape']:18s} {row['mode']:18s} 3.5.0 {t_ref*1e3:10.1f} ms  nsa-flow "
                      f"{t_us*1e3:9.2f} ms  ×{row['speedup']:7.1f}   E {row['ref_energy']:.10e} vs "
                      f"{row['ours_energy']:.10e}  gmap {row['ref_gmap']:.1e} vs {row['ours_gmap']:.1e}  "
                      f"n_grad {row['ref_n_grad']} vs {row['ours_n_grad']}", flush=True)
    json.dump(rows, sys.stdout if False else open(os.environ.get("FIT35_BENCH_JSON", os.devnull), "w"), indent=1)


if __name__ == "__main__":
    main()
