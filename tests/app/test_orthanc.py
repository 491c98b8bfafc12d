"""DICOMweb against a real PACS: a Debian Orthanc with its DICOMweb plugin, started on loopback ports with its own
temporary storage, holding the real CR chest film. The server lists the film (CR, which MONAI Label would filter
out by default), infers on it, and saves a label back."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel_server import REPO, free_port, http_json, publish_quick_model, running_server

from medanomaly.io import read_image, write_image

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    return ORTHANC is not None and PLUGIN.exists()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not orthanc_available():
        if os.environ.get("CI"):
            pytest.fail("Orthanc is not installed (apt-get install -y orthanc orthanc-dicomweb; `make orthanc`)")
        pytest.skip("Orthanc is not installed here (make orthanc installs it)")
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "MedAnomalyTest", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "wb")
    process = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                http_json(url + "/system")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not start:\n{(root / 'orthanc.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def store_instance(orthanc_url: str, path: Path) -> dict:
    request = urllib.request.Request(orthanc_url + "/instances", data=path.read_bytes(), method="POST",
                                     headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_cr_film_from_dicomweb_is_listed_scored_and_labelled(orthanc, data_root, tmp_path, kermany_films):
    film = data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm"
    store_instance(orthanc, film)
    store_instance(orthanc, data_root / "dicom" / "pydicom_data" / "693_UNCR.dcm")  # a CT: not for these models
    series = http_json(orthanc + "/dicom-web/series?Modality=CR")
    cr_series = series[0]["0020000E"]["Value"][0]

    models = tmp_path / "models"
    publish_quick_model(models, kermany_films["NORMAL"][:4], "ae", epochs=1)
    conf = {"model_dir": models, "models": "ae"}
    with running_server(f"{orthanc}/dicom-web", conf=conf) as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path))
        listed = http_json(url + "/medanomaly/images")["images"]
        assert listed == [cr_series]  # CR is listed although MONAI Label's default filter is CT only; the CT is not
        assert http_json(url + "/datastore/")["total"] == 1
        assert client.next_sample("random", {})["id"] == cr_series

        label_file, result = client.infer("ae", cr_series, {})
        assert result["modality"] == "CR" and result["modality_check"]["status"] == "ok"
        source = read_image(film)
        labelmap = read_image(label_file)
        assert labelmap.array.squeeze().shape == source.shape

        mask = np.zeros(source.shape, np.uint8)
        mask[800:1000, 500:700] = 1
        label = write_image(source, tmp_path / "lesion.nii.gz", mask)
        saved = client.save_label(cr_series, str(label), tag="final")
        assert saved["image"] == cr_series
        # dcmqi cannot make a DICOM SEG of a CR film without patient position: the label stays on the server
        assert http_json(url + "/medanomaly/images")["labelled"] == [cr_series]
        assert client.next_sample("random", {}) == {}  # nothing left to label
        stored = client.download_label(cr_series, "final")
        assert read_image(stored).array.sum() == mask.sum()
