"""Shared fixtures: real images from ../shared/data (never copied into the repository)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Shared test helpers (server process, ...) import by module name from any test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
DATA = Path(os.environ.get("MEDANOMALY_DATA", ROOT.parent / "shared" / "data"))
# Servers and model configs in tests start without the shipped checkpoints (monailabel_app/zoo), so that training
# and "not trained yet" are tested from scratch; the zoo's tests name the folder (conf zoo_dir).
os.environ.setdefault("MEDANOMALY_ZOO_DIR", "")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the shared data folder is missing: {DATA} (set MEDANOMALY_DATA)")
    return DATA


@pytest.fixture(scope="session")
def kermany_films(data_root) -> dict[str, list[Path]]:
    """A few real pediatric chest films of each class, in a fixed order."""
    folder = data_root / "kermany_cxr" / "train"
    return {label: sorted((folder / label).glob("*.jpeg"))[:12] for label in ("NORMAL", "PNEUMONIA")}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from a second thread on a shared CPU; oversubscription costs a lot.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
