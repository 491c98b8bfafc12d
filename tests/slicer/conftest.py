"""Import slicer-core's `slicer` package before any test of this folder does.

`slicer` is a namespace-style package: on import it extends its path with every `slicer/` folder found on sys.path
and imports all their modules. pytest puts `tests/` on sys.path (for tests/conftest.py), which would make this very
folder part of `slicer`. Importing it once with `tests/` left out keeps the package to what slicer-core installed.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]


def _import_slicer_core() -> None:
    saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != TESTS_DIR]
    try:
        import slicer  # noqa: F401
        import slicer.util  # noqa: F401
    except ImportError:
        pass  # slicer-core not installed: the tests that need it say so
    finally:
        sys.path[:] = saved


_import_slicer_core()


@pytest.fixture(scope="module")
def server(kermany_films, tmp_path_factory):
    """A live MedAnomaly server with a quickly trained `ae` and three real normal films in its datastore."""
    from monailabel_server import publish_quick_model, running_server

    studies = tmp_path_factory.mktemp("studies")
    for path in kermany_films["NORMAL"][:3]:
        shutil.copy(path, studies / path.name)
    models = tmp_path_factory.mktemp("models")
    publish_quick_model(models, kermany_films["NORMAL"][:4], "ae", epochs=1, image_size=32, batch_size=4,
                        channels=[4, 8, 8])
    with running_server(studies, conf={"models": "ae", "model_dir": str(models)}) as url:
        yield url
