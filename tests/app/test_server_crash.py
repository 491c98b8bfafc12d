"""A server killed (SIGKILL, with its training subprocess) in the middle of a training, then restarted on the same
folders: no saved label is lost, and it serves the model that was published before the crash."""
from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
from monailabel.client import MONAILabelClient
from monailabel_server import REPO, ServerProcess, fill_studies, http_json, publish_quick_model

from medanomaly.io import read_image, write_image

SAMPLE = REPO / "sample_data" / "chest"


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    pytest.fail(f"timed out waiting for {what}")


def test_killed_during_training_keeps_labels_and_previous_model(tmp_path, kermany_films):
    studies = fill_studies(tmp_path / "studies", sorted(SAMPLE.glob("kermany-*.jpeg")))
    models = tmp_path / "models"
    published = publish_quick_model(models, kermany_films["NORMAL"][:4], "ae", epochs=1)
    conf = {"model_dir": models}
    labelled = sorted(p.name[: -len(".jpeg")] for p in studies.glob("kermany-pneumonia-*.jpeg"))

    server = ServerProcess(studies, conf=conf, log_path=tmp_path / "first.log").start()
    try:
        server.wait_ready()
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
        for image_id in labelled:
            film = read_image(studies / f"{image_id}.jpeg")
            mask = np.zeros(film.shape, np.uint8)
            mask[60:120, 40:100] = 1
            client.save_label(image_id, str(write_image(film, tmp_path / f"{image_id}.nii.gz", mask)), tag="final")
        client.train_start("ae", {"epochs": 200})
        # killed once training has checkpointed at least one epoch, i.e. truly in the middle of it
        wait_until(lambda: (models / "ae" / "training.pt").exists(), 240, "the first training epoch")
        assert http_json(server.url + "/train/")["status"] == "RUNNING"
        group = psutil.Process(server.process.pid).children(recursive=True)
        assert group  # the training subprocess
    finally:
        server.kill()
    _, alive = psutil.wait_procs(group, timeout=30)  # a killed process may take a moment to be gone
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    with_restart = ServerProcess(studies, conf=conf, log_path=tmp_path / "second.log").start()
    try:
        with_restart.wait_ready()
        client = MONAILabelClient(with_restart.url, tmpdir=str(tmp_path))
        objects = client.datastore()
        store = http_json(with_restart.url + "/datastore/?output=all")["objects"]
        for image_id in labelled:
            assert "final" in store[image_id]["labels"], objects
            assert client.download_label(image_id, "final")
        served = http_json(with_restart.url + "/info/")["models"]["ae"]["medanomaly"]
        assert served["model_version"] == published
        _, result = client.infer("ae", labelled[0], {})
        assert result["model_version"] == published
    finally:
        with_restart.stop()
