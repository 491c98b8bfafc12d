"""The server launcher shared by the tests: `monailabel_app/server_process.py` (the benchmarks use it too)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `monailabel_app` imports

from monailabel_app.server_process import (APP_DIR, REPO, ServerProcess, fill_studies, free_port,  # noqa: E402,F401
                                           http_json, publish_quick_model, running_server, wait_for_training)
