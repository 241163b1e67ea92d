"""The GPU backend from Python, on a tiny problem (lavapipe is slow). Without an adapter the
test skips with the reason, unless NSA_FLOW_REQUIRE_GPU=1 (CI), which makes it a failure,
as in the Rust suite (tests/common)."""

from __future__ import annotations

import numpy as np
import pytest

import nsa_flow_rs as nf
from conftest import require_gpu


def gpu_or_skip(f):
    try:
        return f()
    except nf.BackendError as e:
        if require_gpu():
            raise
        pytest.skip(f"no GPU adapter: {e}")


def test_gpu_matches_cpu():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((24, 3)))
    r = gpu_or_skip(lambda: nf.nsa_flow(x, x * 0.9, 0.5, max_iter=15, backend="gpu"))
    assert r["backend"].startswith("gpu")
    c = nf.nsa_flow(x, x * 0.9, 0.5, max_iter=15, backend="cpu")
    assert r["iterations"] == c["iterations"]
    assert np.linalg.norm(r["Y"] - c["Y"]) <= 1e-8 * np.linalg.norm(c["Y"])


def test_gpu_fit_products():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal((20, 10)))
    r = gpu_or_skip(lambda: nf.nsa_flow_data(x, 2, backend="gpu", max_iter=200))
    assert r.backend.startswith("gpu")
    c = nf.nsa_flow_data(x, 2, backend="cpu", max_iter=200)
    assert np.linalg.norm(r.Y - c.Y) <= 1e-6 * np.linalg.norm(c.Y)
