"""The MedAnomaly web viewer (`python -m MedAnomalyLib.web`) as a subprocess, and Debian's chromium driven by
playwright, for tests and benchmarks.

    with running_web_viewer(server_url) as url, chromium_page() as page:
        page.goto(url)

Chromium runs headless from /usr/bin/chromium (Debian's package: `make chromium`) with a fresh profile and
nothing that reaches the network; playwright never downloads a browser of its own.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from monailabel_server import REPO, free_port

from processes import stop_process

CHROMIUM = os.environ.get("MEDANOMALY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


@contextlib.contextmanager
def running_web_viewer(server_url: str, port: int | None = None, timeout: float = 240.0):
    """Start the web viewer on 127.0.0.1, wait until it serves its page, yield its URL, stop it."""
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix="medanomaly-web-", suffix=".log")[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDANOMALY_SERVER_URL": server_url}
    with open(log, "ab") as stream:
        process = subprocess.Popen([sys.executable, "-m", "MedAnomalyLib.web", "--port", str(port)],
                                   cwd=str(REPO / "MedAnomalySlicer"), env=env, stdout=stream,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the web viewer exited:\n{log.read_text(encoding='utf-8', errors='replace')[-4000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the web viewer did not answer within {timeout:.0f} s") from None
                time.sleep(1.0)
        yield url
    finally:
        stop_process(process)
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 900):
    """A page in headless chromium with a fresh, temporary profile."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="medanomaly-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height})
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_status(page, prefix: str, timeout: float = 300.0) -> str:
    """Wait until the viewer's status line starts with `prefix` (or an error shows); returns the status."""
    page.wait_for_function(
        "([prefix]) => { const s = document.querySelector('#status'); const e = document.querySelector('#error');"
        " return (s && s.innerText.startsWith(prefix)) || (e && e.innerText.length > 0); }",
        arg=[prefix], timeout=timeout * 1000)
    error = page.query_selector("#error")
    if error is not None and error.inner_text():
        raise AssertionError(f"the viewer shows an error: {error.inner_text()}")
    return page.inner_text("#status")


def wait_for_error(page, timeout: float = 120.0) -> str:
    page.wait_for_selector("#error", timeout=timeout * 1000)
    page.wait_for_function("document.querySelector('#error').innerText.length > 0", timeout=timeout * 1000)
    return page.inner_text("#error")


def view_pixels(page) -> bytes:
    """The slice view as the browser shows it (PNG bytes of the streamed image)."""
    return page.locator("#views img").first.screenshot()


def wait_for_view_change(page, before: bytes, timeout: float = 60.0, interval: float = 0.05) -> float:
    """Seconds until the slice view shows something else than `before` (a new frame from the server)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if view_pixels(page) != before:
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"the slice view did not change within {timeout:.0f} s")
