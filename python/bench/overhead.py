"""Python call overhead of nsa_flow_rs against the Rust call, and nsa_flow_rs against the
Python reference (nsa_flow 0.7.7 and 3.5.0 from PyPI, each in its own venv).

    python python/bench/overhead.py [--ref077 /path/to/venv077/bin/python] [--ref35 /path/to/venv35/bin/python]

Overhead: for Y0 of 66×5 and 50×10, the time of `nsa_flow_rs.nsa_flow(...)` per call against
the time of the same `nsa_flow::nsa_flow` call measured inside Rust (`_native.time_flow`, the
same input already converted): the difference is what Python adds (argument handling, array
conversion, GIL release, result dict). Each figure is the best of several rounds of means.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import textwrap
import time

import numpy as np

import nsa_flow_rs as nf
from nsa_flow_rs import _native

SHAPES = [(66, 5), (50, 10)]


def problem(p, k, seed=0):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal((p, k)))
    return x + 0.05 * rng.standard_normal((p, k)), x


def best_mean(f, n, rounds=7):
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def overhead(max_iter, mode):
    rows = []
    for p, k in SHAPES:
        y0, x0 = problem(p, k)
        opts = dict(w=0.5, max_iter=max_iter, mode=mode, backend="cpu")
        r = nf.nsa_flow(y0, x0, **opts)
        n = max(20, min(2000, int(0.2 / max(r["seconds"], 1e-6))))
        # the two timings alternate, so that a drift of the machine's speed hits both
        t_py = t_rs = float("inf")
        for _ in range(7):
            t_py = min(t_py, best_mean(lambda: nf.nsa_flow(y0, x0, **opts), n, rounds=1))
            t_rs = min(t_rs, _native.time_flow(y0, x0, opts, n))
        rows.append(dict(shape=f"{p}x{k}", mode=mode, max_iter=max_iter, iterations=r["iterations"],
                         python_us=t_py * 1e6, rust_us=t_rs * 1e6, overhead_us=(t_py - t_rs) * 1e6))
    return rows


REF077 = textwrap.dedent("""
    import json, sys, time, numpy as np, torch
    torch.set_num_threads(1)
    from nsa_flow import nsa_flow
    out = []
    for p, k, y0, x0 in json.loads(sys.stdin.read()):
        y0 = torch.tensor(y0, dtype=torch.float64); x0 = torch.tensor(x0, dtype=torch.float64)
        r = nsa_flow(y0, x0, w=0.5, verbose=False)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter(); nsa_flow(y0, x0, w=0.5, verbose=False); best = min(best, time.perf_counter() - t)
        out.append(dict(shape=f"{p}x{k}", seconds=best, iterations=len(r["traces"])))
    print(json.dumps(out))
""")

REF35 = textwrap.dedent("""
    import json, sys, time, warnings, numpy as np, torch
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import nsa_flow
    out = []
    for p, k, y0, x0 in json.loads(sys.stdin.read()):
        x0 = torch.tensor(x0, dtype=torch.float64)
        r = nsa_flow.nsa_flow(x0, w=0.5, mode="anchored")
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter(); nsa_flow.nsa_flow(x0, w=0.5, mode="anchored"); best = min(best, time.perf_counter() - t)
        out.append(dict(shape=f"{p}x{k}", seconds=best, iterations=int(r.iters)))
    print(json.dumps(out))
""")


def reference(python, script):
    payload = [(p, k, *[a.tolist() for a in problem(p, k)]) for p, k in SHAPES]
    res = subprocess.run([python, "-c", script], input=json.dumps(payload), capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout)


def ours_vs_reference(ref077, ref35):
    rows = []
    for p, k in SHAPES:
        y0, x0 = problem(p, k)
        r = nf.nsa_flow(y0, x0, 0.5, mode="reference", backend="cpu")
        t_ref_mode = best_mean(lambda: nf.nsa_flow(y0, x0, 0.5, mode="reference", backend="cpu"), 20, 3)
        c = nf.nsa_flow(y0, x0, 0.5, backend="cpu")
        t_corr = best_mean(lambda: nf.nsa_flow(y0, x0, 0.5, backend="cpu"), 20, 3)
        a = nf.nsa_flow(x0, w=0.5, mode="anchored", backend="cpu")
        t_anch = best_mean(lambda: nf.nsa_flow(x0, w=0.5, mode="anchored", backend="cpu"), 20, 3)
        rows.append(dict(shape=f"{p}x{k}", ours_reference_mode_s=t_ref_mode, ours_reference_iters=r["iterations"],
                         ours_corrected_s=t_corr, ours_corrected_iters=c["iterations"],
                         ours_anchored35_s=t_anch, ours_anchored35_grads=a.n_grad))
    out = {"ours": rows}
    if ref077:
        out["nsa_flow_0.7.7"] = reference(ref077, REF077)
    if ref35:
        out["nsa_flow_3.5.0"] = reference(ref35, REF35)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref077", help="a Python with nsa_flow==0.7.7 installed")
    ap.add_argument("--ref35", help="a Python with nsa_flow==3.5.0 installed")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "overhead": overhead(1, "reference") + overhead(500, "corrected") + overhead(500, "reference"),
        "versus": ours_vs_reference(a.ref077, a.ref35),
    }
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(res["machine"])
    print(f"{'shape':>6} {'mode':>10} {'max_iter':>8} {'iters':>5} {'python µs':>10} {'rust µs':>10} {'overhead µs':>11}")
    for r in res["overhead"]:
        print(f"{r['shape']:>6} {r['mode']:>10} {r['max_iter']:>8} {r['iterations']:>5} {r['python_us']:10.1f} {r['rust_us']:10.1f} {r['overhead_us']:11.1f}")
    v = res["versus"]
    for r in v["ours"]:
        print(f"ours {r['shape']}: reference mode {r['ours_reference_mode_s']*1e3:.2f} ms ({r['ours_reference_iters']} it), "
              f"corrected {r['ours_corrected_s']*1e3:.2f} ms ({r['ours_corrected_iters']} it), "
              f"3.5 anchored {r['ours_anchored35_s']*1e3:.2f} ms ({r['ours_anchored35_grads']} grads)")
    for name in ("nsa_flow_0.7.7", "nsa_flow_3.5.0"):
        if name in v:
            rows = v[name]
            if isinstance(rows, dict):
                print(f"{name}: not run ({rows['error']})")
            else:
                for r in rows:
                    print(f"{name} {r['shape']}: {r['seconds']*1e3:.2f} ms ({r['iterations']} it)")


if __name__ == "__main__":
    sys.exit(main())
