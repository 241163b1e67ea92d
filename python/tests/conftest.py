"""Shared helpers of the Python suite."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def golden_roots() -> list[Path]:
    """As the Rust tests (tests/common): the vendored copies, and ../shared/golden when
    present; in CI (CI set) the shared copy must exist."""
    roots = [REPO / "tests/data/golden", REPO / "tests/data/golden_extra"]
    shared = REPO.parent / "shared/golden"
    if shared.is_dir():
        roots.append(shared)
    elif os.environ.get("CI"):
        raise RuntimeError("CI is set but ../shared/golden is absent")
    return roots


def flow_cases() -> list[Path]:
    cases = []
    for root in golden_roots():
        d = root / "flow"
        if d.is_dir():
            cases += sorted(p for p in d.iterdir() if (p / "params.json").is_file())
    return cases


def cli() -> Path:
    """The crate's command-line tool (built by `cargo test --release` / `cargo build --release`).
    Missing: a skip on a developer's machine, a failure in CI."""
    exe = Path(os.environ.get("NSA_FLOW_CLI", REPO / "target/release/nsa-flow"))
    if exe.is_file():
        return exe
    found = shutil.which("nsa-flow")
    if found:
        return Path(found)
    if os.environ.get("CI"):
        raise RuntimeError(f"the nsa-flow binary is missing ({exe}); CI builds it before the Python tests")
    pytest.skip(f"the nsa-flow binary is not built ({exe}): cargo build --release")


def read_json(p: Path) -> dict:
    return json.loads(p.read_text())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def require_gpu() -> bool:
    return os.environ.get("NSA_FLOW_REQUIRE_GPU") == "1"
