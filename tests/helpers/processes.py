"""Stopping the helper processes the tests start (Orthanc, the web viewer)."""
from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, grace_seconds: float = 20) -> None:
    """Ask politely (SIGTERM), then insist (SIGKILL) if it has not gone within the grace period."""
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
