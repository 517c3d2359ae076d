"""Shared test fixtures: where the real data lives, and skips that say why."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (developers and CI); NAS_HARNESS_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("NAS_HARNESS_SHARED_DATA", ROOT.parent / "shared" / "data"))
NB201_CSV = SHARED_DATA / "nb201" / "nb201_test_acc_200ep.csv"
CIFAR10_TGZ = SHARED_DATA / "cifar10-jpg.tar.gz"


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared data, but {path} is missing")
        pytest.skip(f"real data not found at {path} (set NAS_HARNESS_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def nb201_csv() -> Path:
    """The shared NAS-Bench-201 ground-truth table (15,625 rows)."""
    return _need(NB201_CSV)


@pytest.fixture(scope="session")
def cifar10_tgz() -> Path:
    """The shared CIFAR-10 ImageFolder archive."""
    return _need(CIFAR10_TGZ)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: one thread is faster, and steadier on a shared 2-core machine
    (two threads per process oversubscribe the cores while Ray trials run beside them)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
