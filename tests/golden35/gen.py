"""Goldens of nsa_flow 3.5.0 (the pure-Python wheel on PyPI) for tests/fit35.rs.

Run in a scratch venv:  python -m venv v && v/bin/pip install torch numpy \
    && v/bin/pip install --no-deps nsa_flow==3.5.0 && v/bin/python tests/golden35/gen.py
Writes tests/golden35/cases/<name>.{in.npy,y.npy,init.npy,json}. Deterministic: fixed seeds,
one torch thread, float64.
"""
import json
import os
import sys

import numpy as np
import torch

import nsa_flow
from nsa_flow import diagnostics, energy, angle, linalg, reconstruct, project

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "cases")
REAL = os.path.join(HERE, "..", "..", "..", "shared", "data")
os.makedirs(OUT, exist_ok=True)
assert nsa_flow.__version__ == "3.5.0", nsa_flow.__version__


def save(name, arr):
    np.save(os.path.join(OUT, name), np.asfortranarray(np.asarray(arr, dtype=np.float64)))


def report(r):
    keys = ["energy", "fidelity", "defect", "iters", "stop_reason", "grad_map", "n_grad",
            "n_energy", "converged", "certificate", "energy_start", "grad_map_start",
            "defect_D", "defect_Cg", "defect_C", "defect_Coff", "raw_defect", "effective_rank",
            "column_norm_ratio", "sparsity", "max_support", "mean_support", "n_dead_columns",
            "support_overlap", "fidelity_mode", "target_negative_mass", "clamp_distance",
            "scale_ratio", "matrix_free", "lobe_overlap"]
    out = {}
    for k in keys:
        if k in r:
            v = r[k]
            if isinstance(v, (str, bool, int)):
                out[k] = v
            else:
                v = float(v)
                out[k] = v if np.isfinite(v) else str(v)   # JSON has no inf/nan
    return out


def case(name, inp, call, init_matrix=None, **meta):
    save(name + ".in.npy", inp)
    r = call(torch.tensor(inp))
    save(name + ".y.npy", r["Y"].numpy())
    if "parts" in r:
        save(name + ".parts.npy", r["parts"].numpy())
    if init_matrix is not None:
        save(name + ".init.npy", init_matrix)
    rec = dict(meta, result=report(r))
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
    print(f"{name:34s} stop={r['stop_reason']:10s} gmap={r['grad_map']:.2e} "
          f"n_grad={r['n_grad']:5d} E={r['energy']:.12e}")


rng = np.random.default_rng(20261206)
Xpos = np.abs(rng.standard_normal((60, 20)))
Xc = rng.standard_normal((60, 20)); Xc -= Xc.mean(0)
Xwide = np.abs(rng.standard_normal((20, 50)))

# data mode: every init and functional
for init in ["clamp", "pca_clamp", "relax"]:
    for w in [0.25, 0.5, 0.9]:
        case(f"data_{init}_w{w}", Xpos, lambda X, init=init, w=w: nsa_flow.nsa_flow(
            X, k=3, w=w, mode="data", init=init), mode="data", k=3, w=w, init=init, orth="D")
for orth in ["Cg", "C", "Coff"]:
    case(f"data_orth{orth}", Xpos, lambda X, orth=orth: nsa_flow.nsa_flow_data(
        X, k=3, w=0.5, orth=orth), mode="data", k=3, w=0.5, init="clamp", orth=orth)
case("data_matrixfree", Xwide, lambda X: nsa_flow.nsa_flow(X, k=4, w=0.5, mode="data"),
     mode="data", k=4, w=0.5, init="clamp", orth="D")
case("data_sparse", Xpos, lambda X: nsa_flow.nsa_flow(X, k=3, w=0.5, mode="data", sparseness=0.6),
     mode="data", k=3, w=0.5, init="clamp", orth="D", sparseness=0.6)
case("data_spg", Xpos, lambda X: nsa_flow.nsa_flow(X, k=3, w=0.5, mode="data", optimizer="spg"),
     mode="data", k=3, w=0.5, init="clamp", orth="D", optimizer="spg")
U = np.random.default_rng(7).uniform(size=(20, 3))
case("data_given_init", Xpos, lambda X: nsa_flow.nsa_flow_data(X, k=3, w=0.5, init=torch.tensor(U)),
     init_matrix=U, mode="data", k=3, w=0.5, init_kind="matrix", orth="D")

# signed mode
for init in ["split", "pca_split", "relax"]:
    case(f"signed_{init}", Xc, lambda X, init=init: nsa_flow.nsa_flow(
        X, k=3, w=0.5, mode="signed", init=init), mode="signed", k=3, w=0.5, init=init, orth="Cg")
case("signed_adaptive_pos", Xpos, lambda X: nsa_flow.nsa_flow(X, k=3, w=0.5, mode="signed"),
     mode="signed", k=3, w=0.5, init="auto", orth="Cg")
case("signed_consolidate", Xc, lambda X: nsa_flow.nsa_flow(X, k=3, w=0.5, mode="signed",
     consolidate=True), mode="signed", k=3, w=0.5, init="auto", orth="Cg", consolidate=True)
case("signed_sparse", Xc, lambda X: nsa_flow.nsa_flow(X, k=3, w=0.5, mode="signed",
     sparseness=0.5), mode="signed", k=3, w=0.5, init="auto", orth="Cg", sparseness=0.5)

# anchored mode
T_pos = np.abs(rng.standard_normal((40, 4)))
T_sig = rng.standard_normal((40, 4))
for w in [0.25, 0.5, 0.9]:
    case(f"anchored_pos_w{w}", T_pos, lambda X, w=w: nsa_flow.nsa_flow(X, w=w),
         mode="anchored", w=w, fidelity="auto", orth="D")
case("anchored_signed_auto", T_sig, lambda X: nsa_flow.nsa_flow(X, w=0.5),
     mode="anchored", w=0.5, fidelity="auto", orth="D")
case("anchored_signed_anchor", T_sig, lambda X: nsa_flow.nsa_flow(X, w=0.5, fidelity="anchor"),
     mode="anchored", w=0.5, fidelity="anchor", orth="D")
case("anchored_orthCg", T_pos, lambda X: nsa_flow.nsa_flow(X, w=0.5, orth="Cg"),
     mode="anchored", w=0.5, fidelity="auto", orth="Cg")
case("anchored_sparse", T_pos, lambda X: nsa_flow.nsa_flow(X, w=0.5, sparseness=0.5),
     mode="anchored", w=0.5, fidelity="auto", orth="D", sparseness=0.5)

# real data (../shared/data, PROVENANCE.md there)
golub = np.load(os.path.join(REAL, "golub_multtest_expr.npy"))      # genes × samples
G = golub.T                                                         # samples × genes
top = np.argsort(-G.var(0), kind="stable")[:300]
Gs = G[:, np.sort(top)]
case("golub_data", Gs - Gs.min(0), lambda X: nsa_flow.nsa_flow(X, k=3, w=0.5, mode="data"),
     mode="data", k=3, w=0.5, init="clamp", orth="D")
case("golub_signed", Gs - Gs.mean(0), lambda X: nsa_flow.nsa_flow(X, k=3, w=0.5, mode="signed"),
     mode="signed", k=3, w=0.5, init="auto", orth="Cg")
sonar = np.load(os.path.join(REAL, "sonar_X.npy"))
case("sonar_signed_consolidate", sonar - sonar.mean(0), lambda X: nsa_flow.nsa_flow(
     X, k=5, w=0.5, mode="signed", consolidate=True), mode="signed", k=5, w=0.5, init="auto",
     orth="Cg", consolidate=True)
digits = np.load(os.path.join(REAL, "digits_X.npy"))[:300]
case("digits_data", digits, lambda X: nsa_flow.nsa_flow(X, k=5, w=0.5, mode="data"),
     mode="data", k=5, w=0.5, init="clamp", orth="D")
sl = np.load(os.path.join(REAL, "sonar_pca_loadings_k5.npy"))
case("sonar_loadings_anchored", sl, lambda X: nsa_flow.nsa_flow(X, w=0.5),
     mode="anchored", w=0.5, fidelity="auto", orth="D")

# the pieces, deterministic and exact
Y = np.abs(rng.standard_normal((17, 5))); Y[:, 2] *= 3.0
Yt = torch.tensor(Y)
save("pieces.y.npy", Y)
pieces = {}
for name, (val, grad, _) in diagnostics.ORTH.items():
    pieces[name] = float(val(Yt))
    save(f"pieces.grad_{name}.npy", grad(Yt).numpy())
E = linalg.top_k_eigenvectors(4, X=torch.tensor(Xpos))
save("pieces.topk_data.npy", E.numpy())
save("pieces.topk_wide.npy", linalg.top_k_eigenvectors(4, X=torch.tensor(Xwide)).numpy())
save("pieces.varimax.npy", linalg.varimax(E).numpy())
save("pieces.sparse.npy", project.simlr_sparseness(Yt, 0.6, nonneg=True, only_if_denser=True).numpy())
pieces["basis_report"] = {k: (float(v) if np.isfinite(float(v)) else str(float(v))) for k, v in diagnostics.basis_report(Yt).items()}
with open(os.path.join(OUT, "pieces.json"), "w") as f:
    json.dump(pieces, f, indent=1, sort_keys=True)
print("pieces written")
