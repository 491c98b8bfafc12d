"""Start the real MedAnomaly MONAI Label server as a subprocess on a free loopback port, for tests and benchmarks.

    from monailabel_app.server_process import running_server   # the repository root on sys.path
    with running_server(studies_dir, conf={"model_dir": str(tmp / "models")}) as url:
        MONAILabelClient(url).info()

The server runs through the `monailabel` launcher of the virtual environment that runs the caller
(`MONAILABEL_PYEXE` is set to this interpreter), in its own process group so that stopping it also stops a
training subprocess it started. Its log is kept in a file (`ServerProcess.log_path`) and printed when the server
fails to come up."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parent

# Settings that keep a test server quiet and self-contained: no scoring callbacks to port 8000 after training,
# no file watcher, no sessions folder in the home directory.
SERVER_ENV = {
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    "MONAI_LABEL_SESSIONS": "false",
    "MONAI_LABEL_TRACKING_ENABLED": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


class ServerProcess:
    """One `monailabel start_server` subprocess: start(), wait_ready(), stop() or kill()."""

    def __init__(self, studies, app=APP_DIR, conf: dict | None = None, env: dict | None = None,
                 port: int | None = None, log_path: str | Path | None = None):
        self.studies = str(studies)
        self.app = str(app)
        self.conf = dict(conf or {})
        self.env = dict(env or {})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="monailabel-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        bin_dir = Path(sys.executable).parent
        launcher = bin_dir / "monailabel"
        cmd = [str(launcher), "start_server", "--app", self.app, "--studies", self.studies,
               "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.conf.items():
            value = str(value).lower() if isinstance(value, bool) else str(value)
            if any(ch.isspace() for ch in key + value):  # the launcher splits its arguments on spaces
                raise ValueError(f"conf {key}={value!r}: the monailabel launcher cannot pass spaces")
            cmd += ["--conf", key, value]
        return cmd

    def start(self) -> "ServerProcess":
        env = {**os.environ, **SERVER_ENV, **self.env}
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # python, monailabel and itkimage2segimage
        env["MONAILABEL_PYEXE"] = sys.executable
        env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        return self

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the MONAI Label server exited (code {self.process.returncode}):\n{self.log_tail()}")
            try:
                http_json(self.url + "/info/", timeout=5)
                return self.url
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"the MONAI Label server did not answer /info/ within {timeout:.0f} s:\n{self.log_tail()}")

    def _signal_group(self, sig) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the server (and its training subprocess) to stop; kill what is left after `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # children of the group (a training run) too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """A crash: SIGKILL to the whole process group, no clean-up on the server side."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)


@contextlib.contextmanager
def running_server(studies, app=APP_DIR, conf: dict | None = None, env: dict | None = None,
                   port: int | None = None, timeout: float = 240.0, log_path=None):
    """Start the server on `studies` (a folder or a DICOMweb URL), wait for /info/, yield its URL, stop it."""
    server = ServerProcess(studies, app=app, conf=conf, env=env, port=port, log_path=log_path).start()
    failed = True
    try:
        server.wait_ready(timeout)
        yield server.url
        failed = False
    finally:
        server.stop()
        if not failed and log_path is None:  # a temporary log is kept only when something went wrong
            server.log_path.unlink(missing_ok=True)
        elif failed:
            print(f"MONAI Label server log: {server.log_path}")


def fill_studies(dest, files) -> "Path":
    """A datastore folder holding copies of `files` (the sources stay untouched)."""
    import shutil

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy2(file, dest / Path(file).name)
    return dest


def publish_quick_model(model_dir, films, name: str = "ae", epochs: int = 1, **config) -> str:
    """Train `name` for a few steps in this process and publish it where the server looks (model_dir/name/model.pt);
    returns its model_version. Saves a server round trip in tests that need a trained model but not training."""
    import medanomaly

    folder = Path(model_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    model = medanomaly.create(name, **config)
    model.fit([str(f) for f in films], epochs=epochs, progress=False, checkpoint=folder / "training.pt")
    os.replace(folder / "training.pt", folder / "model.pt")
    return model.model_version


def wait_for_training(url: str, timeout: float = 300.0, poll: float = 2.0) -> dict:
    """Poll GET /train/ until the last training is no longer running; returns its status record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http_json(url + "/train/")
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(poll)
    raise TimeoutError(f"training still running after {timeout:.0f} s")
