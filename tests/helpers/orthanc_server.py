"""A real Orthanc PACS with its DICOMweb plugin for tests: Debian's `orthanc` and `orthanc-dicomweb` (`make orthanc`),
started by hand on free loopback ports with its own temporary storage.

    with running_orthanc(tmp_path) as url:          # url = http://127.0.0.1:PORT; DICOMweb at url + "/dicom-web"
        store_instance(url, Path("film.dcm"))
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from monailabel_server import free_port, http_json

from processes import stop_process

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    return ORTHANC is not None and PLUGIN.exists()


def require_orthanc() -> None:
    """Skip where Orthanc is not installed; fail on CI, where `make test` installs it."""
    import pytest

    if not orthanc_available():
        if os.environ.get("CI"):
            pytest.fail("Orthanc is not installed (apt-get install -y orthanc orthanc-dicomweb; `make orthanc`)")
        pytest.skip("Orthanc is not installed here (make orthanc installs it)")


@contextlib.contextmanager
def running_orthanc(root: Path, timeout: float = 60.0):
    """Start Orthanc with its storage under `root`; yield its base URL; stop it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "MedAnomalyTest", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = open(root / "orthanc.log", "wb")
    process = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                http_json(url + "/system")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (root / 'orthanc.log').read_text(encoding='utf-8', errors='replace')
                    raise RuntimeError(f"Orthanc did not start:\n{log[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        stop_process(process)
        log.close()


def store_instance(orthanc_url: str, path: Path) -> dict:
    """POST one DICOM file to Orthanc; returns Orthanc's record of it (ID, ParentSeries...)."""
    request = urllib.request.Request(orthanc_url + "/instances", data=Path(path).read_bytes(), method="POST",
                                     headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
