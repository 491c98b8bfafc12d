"""The MONAI Label server, run for real as a subprocess on a loopback port and driven through MONAILabelClient and
REST: every registered model listed, training on the datastore with a lesion label, inference on datastore
films, uploaded files and volumes (labelmap on the input's grid + float heatmap), active learning, scoring and
a few concurrent clients. One server for the whole module."""
from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import medanomaly
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from monailabel_server import REPO, fill_studies, http_json, running_server, wait_for_training

from medanomaly.io import MedicalImage, read_image, write_image

SAMPLE = REPO / "sample_data"
FILM_ID = "kermany-normal-IM-0115-0001"
LESION_ID = "kermany-pneumonia-person1000_bacteria_2931"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    studies = fill_studies(root / "studies", sorted((SAMPLE / "chest").iterdir()) + sorted((SAMPLE / "brain").iterdir()))
    conf = {"model_dir": root / "models", "train_epochs": 1}
    with running_server(studies, conf=conf) as url:
        yield {"url": url, "studies": studies, "models": root / "models", "out": root / "out"}


@pytest.fixture(scope="module")
def client(server):
    server["out"].mkdir(exist_ok=True)
    return MONAILabelClient(server["url"], tmpdir=str(server["out"]))


def fetch(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=60) as response:
        path.write_bytes(response.read())
    return path


def lesion_label(film: Path, path: Path) -> Path:
    """A lesion mask drawn on a real film's grid: a disc in the right lung."""
    image = read_image(film)
    rows, cols = np.ogrid[: image.shape[0], : image.shape[1]]
    disc = ((rows - image.shape[0] * 0.5) ** 2 + (cols - image.shape[1] * 0.3) ** 2) < (image.shape[0] * 0.12) ** 2
    return write_image(image, path, disc.astype(np.uint8))


def test_info_lists_every_registered_model(client):
    info = client.info()
    registered = medanomaly.list_models()
    assert sorted(info["models"]) == registered
    assert sorted(info["trainers"]) == registered
    for name, described in medanomaly.describe_models().items():
        served = info["models"][name]
        assert served["medanomaly"]["kind"] == described["kind"]
        assert served["medanomaly"]["inference_options"] == described["inference_options"]
        assert served["medanomaly"]["default_config"] == json.loads(json.dumps(described["default_config"]))
        assert served["labels"] == {"anomaly": 1}
    assert {"most_anomalous", "most_uncertain"} <= set(info["strategies"])
    assert "anomaly_score" in info["scoring"]


def test_untrained_model_is_refused_with_what_to_do(client):
    with pytest.raises(MONAILabelClientException) as caught:
        client.infer("ae", FILM_ID, {})
    assert "Status: 409" in caught.value.msg and "POST /train/ae" in caught.value.msg


def test_save_label_then_train_uses_it_for_calibration(client, server):
    label = lesion_label(server["studies"] / f"{LESION_ID}.jpeg", server["out"] / "lesion.nii.gz")
    saved = client.save_label(LESION_ID, str(label), tag="final")
    assert saved["image"] == LESION_ID
    assert LESION_ID in client.datastore()["objects"] or client.datastore()  # the datastore answers after a save

    started = client.train_start("ae", {"epochs": 1})
    assert started["status"] in ("SUBMITTED", "RUNNING")
    status = wait_for_training(server["url"])
    assert status["status"] == "DONE", status.get("details")

    info = client.info()
    served = info["models"]["ae"]["medanomaly"]
    assert served["trained"] and served["model_version"].startswith("ae-v")
    stats = info["train_stats"]["ae"]
    assert stats["status"] == "DONE" and stats["abnormals"] == 1 and stats["epochs"] == 1
    assert stats["model_version"] == served["model_version"]
    # the train status says how far training got: steps done of the epoch and the epoch's estimated length
    progress = stats["progress"]
    assert progress["steps_done"] >= 1 and progress["step"] == progress["steps_per_epoch"]
    assert progress["epoch_seconds_estimate"] > 0 and "s/step" in progress["line"]
    # one film with a lesion mask: thresholds come from Youden on it and the held-out normals
    assert stats["calibration"]["n_abnormal"] == 1
    assert "youden" in json.dumps(stats["calibration"]).lower()
    assert (server["models"] / "ae" / "model.pt").is_file()
    assert not (server["models"] / "ae" / "training.pt").exists()


def test_infer_datastore_film_returns_labelmap_on_its_grid_and_the_heatmap(client, server):
    label_file, result = client.infer("ae", FILM_ID, {})
    film = read_image(server["studies"] / f"{FILM_ID}.jpeg")
    labelmap = read_image(label_file)
    assert labelmap.shape == film.shape and labelmap.same_geometry(film)
    assert set(np.unique(labelmap.array)) <= {0.0, 1.0}
    assert result["model"] == "ae" and result["model_version"].startswith("ae-v")
    assert result["threshold_source"] != "request" and result["pixel_threshold"] is not None
    assert isinstance(result["score"], float) and result["timings"]["total_seconds"] > 0
    heatmap = read_image(fetch(server["url"] + result["heatmap"]["url"], server["out"] / "heat.nrrd"))
    assert heatmap.shape == film.shape and heatmap.array.dtype == np.float32
    # the labelmap is the heatmap at the threshold the JSON reports
    np.testing.assert_array_equal(labelmap.array > 0, heatmap.array >= result["pixel_threshold"])
    names = http_json(server["url"] + f"/medanomaly/maps/{result['result_id']}")
    assert "anomaly" in names["maps"]


def test_threshold_param_overrides_the_calibrated_one(client):
    _, calibrated = client.infer("ae", FILM_ID, {})
    everything, low = client.infer("ae", FILM_ID, {"threshold": -1.0})
    nothing, high = client.infer("ae", FILM_ID, {"threshold": 1e9})
    assert low["threshold_source"] == "request" and low["pixel_threshold"] == -1.0
    assert read_image(everything).array.min() == 1 and read_image(nothing).array.max() == 0
    assert low["score"] == pytest.approx(calibrated["score"])


def test_uploaded_single_slice_nifti_film_keeps_its_geometry(client, server):
    film = read_image(server["studies"] / f"{FILM_ID}.jpeg")
    as_slice = MedicalImage(film.array[None], spacing=(0.4, 0.4, 1.0), origin=(-40.0, 12.5, 3.0))
    upload = write_image(as_slice, server["out"] / "slicer_film.nii.gz")
    label_file, result = client.infer("ae", "", {"label_format": "nrrd"}, file=str(upload))
    labelmap = read_image(label_file)
    assert str(label_file).endswith(".nrrd")
    assert labelmap.shape == (1,) + film.shape and labelmap.same_geometry(read_image(upload))
    assert result["shape"] == [1, *film.shape]


def test_uploaded_cr_dicom_passes_the_modality_screen(client, data_root):
    label_file, result = client.infer("ae", "", {}, file=str(data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm"))
    assert result["modality_check"]["status"] == "ok" and result["modality"] == "CR"
    assert read_image(label_file).shape == (1955, 1841)


def test_volume_upload_is_scored_slice_by_slice(client, server):
    volume_path = next((server["studies"]).glob("IXI*.nii.gz"))
    volume = read_image(volume_path)
    label_file, result = client.infer("ae", "", {}, file=str(volume_path))
    assert read_image(label_file).same_geometry(volume)
    assert len(result["slice_scores"]) == volume.shape[0]


def test_active_learning_and_scoring(client, server):
    anomalous = client.next_sample("most_anomalous", {"model": "ae"})
    uncertain = client.next_sample("most_uncertain", {"model": "ae"})
    for sample in (anomalous, uncertain):
        assert sample["id"] != LESION_ID  # labelled images are not offered again
        assert sample["model_version"].startswith("ae-v")
    request = urllib.request.Request(server["url"] + "/scoring/anomaly_score", data=b'{"model": "ae"}',
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:
        scored = json.loads(response.read())["scores"]["ae"]
    assert FILM_ID in scored and not any(key.startswith("IXI") for key in scored)  # the volume is not a film
    top = max((key for key in scored if key != LESION_ID), key=lambda key: scored[key]["score"])
    assert anomalous["id"] == top
    info = http_json(server["url"] + f"/datastore/image/info?image={FILM_ID}")
    assert info["medanomaly"]["ae"]["score"] == pytest.approx(scored[FILM_ID]["score"])


def test_concurrent_clients_get_correct_answers(server):
    reference = MONAILabelClient(server["url"], tmpdir=str(server["out"])).infer("ae", FILM_ID, {})[1]
    errors, scores = [], []

    def work():
        own = MONAILabelClient(server["url"], tmpdir=str(server["out"]))
        for _ in range(3):
            try:
                scores.append(own.infer("ae", FILM_ID, {})[1]["score"])
            except Exception as error:  # collected: the assertion below names them
                errors.append(repr(error))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and len(scores) == 12
    assert scores == pytest.approx([reference["score"]] * 12)
