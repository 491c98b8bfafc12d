"""The server as `make serve` starts it on a fresh clone: a datastore filled from sample_data/ by make_models.py
(which trains nothing), the shipped checkpoints of monailabel_app/zoo/ served at once with their cards in /info/,
the sample CR DICOM scored by the shipped baseline; then a checkpoint trained here takes precedence without
touching the shipped file, and the shipped file cannot be deleted through /model/."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import medanomaly
import numpy as np
import pytest
import requests
from medanomaly import zoo
from medanomaly.io import read_image
from monailabel.client import MONAILabelClient
from monailabel_server import REPO, http_json, publish_quick_model, running_server

CR_DICOM = "pydicom-RG1_J2KI"  # sample_data/chest: a real CR chest film (JPEG 2000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    studies = root / "studies"
    subprocess.run([sys.executable, str(REPO / "monailabel_app" / "make_models.py"), "--studies", str(studies)],
                   check=True, timeout=300)
    assert not (root / "models").exists()  # nothing trained
    before = {path.name: zoo.file_sha256(path) for path in zoo.DEFAULT_ZOO.glob("*.pt")}
    with running_server(studies, conf={"model_dir": root / "models", "zoo_dir": zoo.DEFAULT_ZOO}) as url:
        yield {"url": url, "studies": studies, "models": root / "models", "out": root / "out", "before": before}
    assert before == {path.name: zoo.file_sha256(path) for path in zoo.DEFAULT_ZOO.glob("*.pt")}


def test_info_marks_every_shipped_model_trained_with_its_card(server):
    models = http_json(server["url"] + "/info/", timeout=60)["models"]
    shipped = sorted(path.stem for path in zoo.DEFAULT_ZOO.glob("*.pt"))
    assert "ae" in shipped
    for name in medanomaly.list_models():
        served = models[name]["medanomaly"]
        card = json.loads((zoo.DEFAULT_ZOO / f"{name}.card.json").read_text(encoding="utf-8"))
        assert served["card"]["summary"] == card["summary"] and "regression_subset" not in served["card"]
        if name in shipped:
            assert served["trained"] and served["source"] == "shipped"
            assert served["model_version"] == card["model_version"]
        else:
            assert not served["trained"] and served["card"]["summary"].startswith("not shipped: ")


def test_shipped_baseline_scores_the_sample_cr_dicom(server):
    server["out"].mkdir(exist_ok=True)
    client = MONAILabelClient(server["url"], tmpdir=str(server["out"]))
    label_file, result = client.infer("ae", CR_DICOM, {})
    labelmap = read_image(label_file)
    film = read_image(server["studies"] / f"{CR_DICOM}.dcm")
    assert labelmap.shape == film.shape and set(np.unique(labelmap.array)) <= {0.0, 1.0}
    card = json.loads((zoo.DEFAULT_ZOO / "ae.card.json").read_text(encoding="utf-8"))
    assert result["model_version"] == card["model_version"]
    assert result["image_threshold"] == pytest.approx(card["figures"]["image_threshold"])


def test_shipped_file_is_not_deleted_and_a_checkpoint_trained_here_takes_precedence(server, kermany_films):
    refused = requests.delete(server["url"] + "/model/ae", timeout=30)
    assert refused.status_code == 409 and "shipped" in refused.json()["detail"]
    version = publish_quick_model(server["models"], kermany_films["NORMAL"][:3], "ae", epochs=1,
                                  image_size=64, channels=[4, 8, 8])
    served = http_json(server["url"] + "/info/", timeout=60)["models"]["ae"]["medanomaly"]
    assert served["source"] == "trained" and served["model_version"] == version
    assert (zoo.DEFAULT_ZOO / "ae.pt").is_file()
    shutil.rmtree(server["models"] / "ae")  # back to the shipped one
    served = http_json(server["url"] + "/info/", timeout=60)["models"]["ae"]["medanomaly"]
    assert served["source"] == "shipped"
