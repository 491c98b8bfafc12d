"""The Slicer module's workflow (MedAnomalyLib, everything but the Qt widgets) against the REAL MedAnomaly MONAI
Label server, started as a subprocess on a loopback port. Films are sent the way Slicer sends them: a single-slice
volume written as NRRD."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedAnomalySlicer"))

from MedAnomalyLib import AnomalyWorkflow, Volume, read_volume, threshold_mask  # noqa: E402
from MedAnomalyLib.__main__ import main as lib_main  # noqa: E402
from monailabel_server import running_server  # noqa: E402

# Small enough for two busy CPU cores: a couple of epochs of the AE at 64 px.
TRAINING = {"epochs": 2, "batch_size": 4, "image_size": 64, "minutes": 3}


@pytest.fixture(scope="module")
def server(kermany_films, tmp_path_factory):
    studies = tmp_path_factory.mktemp("studies")
    for path in kermany_films["NORMAL"][:5] + kermany_films["PNEUMONIA"][:2]:
        shutil.copy(path, studies / path.name)  # a throw-away datastore outside the repository
    models = tmp_path_factory.mktemp("models")
    with running_server(studies, conf={"models": "ae", "model_dir": str(models)}) as url:
        yield url, studies


@pytest.fixture()
def workflow(server):
    flow = AnomalyWorkflow()
    flow.connect(server[0])
    assert flow.wait(60).error is None
    yield flow
    flow.cleanup()


def slicer_film(path: Path) -> Volume:
    """What the module sends after Slicer loaded a JPEG film: a colour vector volume of one slice, spacing 1,
    LPS-aligned axes, turned grey by the logic."""
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return Volume.from_slicer_array(rgb[np.newaxis], np.diag([-1.0, -1.0, 1.0, 1.0]))


def record(signal) -> list:
    seen = []
    signal.connect(lambda *args: seen.append(args))
    return seen


def test_clinician_workflow_end_to_end(server, workflow, kermany_films, tmp_path):
    url, studies = server
    # 1) connect: models with descriptions, strategies
    model = workflow.model("ae")
    assert model.description and model.kind == "reconstruction"
    assert {"most_anomalous", "random"} <= set(workflow.strategies)
    errors = record(workflow.error_occurred)

    # An untrained model: the server's refusal reaches the panel as one message, not a traceback.
    film = slicer_film(kermany_films["PNEUMONIA"][3])
    if not model.trained:
        workflow.compute(film, "ae", name="untrained try")
        state = workflow.wait(120)
        assert "409" in state.error and "not trained" in state.error and errors[-1] == (state.error,)

    # 6) retrain with progress, polled to completion
    progress = record(workflow.progress)
    finished = record(workflow.training_finished)
    workflow.retrain("ae", TRAINING, poll_seconds=0.5)
    state = workflow.wait(600)
    assert state.error is None, state.error
    assert finished and finished[0][0]["status"]["status"] == "DONE"
    assert finished[0][0]["stats"].get("model_version")
    assert any(message.startswith("Training ae") for _, message in progress)
    workflow.connect(url)
    workflow.wait(60)
    assert workflow.model("ae").trained

    # 2) compute on a film sent as a single-slice volume; label, heatmap and score come back on its grid
    results, masks = record(workflow.result_ready), record(workflow.mask_changed)
    workflow.compute(film, "ae", name=kermany_films["PNEUMONIA"][3].name)
    state = workflow.wait(300)
    assert state.error is None, state.error
    result = workflow.result
    assert results == [(result,)]
    assert result.heatmap.shape == film.shape == (1,) + film.array.shape[1:]
    assert result.heatmap.same_grid(film) and result.label.same_grid(film)
    assert result.heatmap.array.dtype == np.float32 and np.isfinite(result.heatmap.array).all()
    assert set(np.unique(result.label.array)) <= {0, 1}
    assert isinstance(result.score, float) and result.details["model"] == "ae"
    assert "Score" in result.summary()
    # The server's labelmap is its heatmap cut at the threshold it reports; the panel starts from that cut.
    pixel_threshold = result.pixel_threshold
    np.testing.assert_array_equal(result.label.array, threshold_mask(result.heatmap.array, pixel_threshold))
    assert masks[-1][1] == pytest.approx(pixel_threshold)

    # 4) local re-threshold: the mask is exactly heatmap >= t (no server call involved)
    threshold = float(np.percentile(result.heatmap.array, 90))
    mask = workflow.set_threshold(threshold)
    np.testing.assert_array_equal(mask, (result.heatmap.array >= threshold).astype(np.uint8))
    assert 0.05 < mask.mean() < 0.15 and masks[-1][1] == threshold
    assert "Threshold" in workflow.threshold_summary()

    # 5) submit a corrected label (the annotator erased the top half) and read it back from the datastore
    corrected = mask.copy()
    corrected[:, : corrected.shape[1] // 2] = 0
    submitted = record(workflow.correction_submitted)
    workflow.submit_correction(corrected)
    state = workflow.wait(120)
    assert state.error is None, state.error
    assert submitted[0][0]["image"] == result.image_id
    stored = read_volume(workflow.client.download_label(result.image_id, tmp_path))
    assert stored.same_grid(film)
    np.testing.assert_array_equal(stored.array.reshape(corrected.shape) > 0, corrected > 0)

    # 7) next image by active learning: one of the studies without a final label, downloadable and scorable
    samples = record(workflow.sample_ready)
    workflow.next_sample("most_anomalous", "ae")
    state = workflow.wait(300)
    assert state.error is None, state.error
    sample = samples[0][0]
    assert sample.image_id != result.image_id
    original = next(path for path in studies.iterdir() if path.name.startswith(sample.image_id))
    assert sample.path.read_bytes() == original.read_bytes()
    workflow.compute(None, "ae", image_id=sample.image_id)
    state = workflow.wait(300)
    assert state.error is None, state.error
    assert workflow.result.image_id == sample.image_id
    columns, rows = sitk.ReadImage(str(original)).GetSize()
    assert workflow.result.heatmap.shape == (1, rows, columns)
    assert errors == errors[:1]  # nothing went wrong after the expected refusal


def test_preview_command_writes_the_overlay(server, kermany_films, tmp_path, capsys):
    film = kermany_films["PNEUMONIA"][4]
    out = tmp_path / "overlay.png"
    assert lib_main(["preview", "--server", server[0], "--model", "ae", "--image", str(film), "--out", str(out),
                     "--opacity", "0.8"]) == 0
    assert "Score" in capsys.readouterr().out
    picture = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    columns, rows = sitk.ReadImage(str(film)).GetSize()
    assert picture.shape == (rows, columns, 3)
    assert (picture[..., 0].astype(int) - picture[..., 2]).max() > 50  # the red-yellow heat shows somewhere
    assert lib_main(["preview", "--server", server[0], "--model", "nope", "--image", str(film),
                     "--out", str(tmp_path / "no.png")]) == 2
    assert "Server error 404" in capsys.readouterr().err and not (tmp_path / "no.png").exists()


def test_bad_requests_become_messages(server, workflow, kermany_films):
    film = slicer_film(kermany_films["NORMAL"][7])
    errors = record(workflow.error_occurred)
    workflow.compute(film, "no-such-model")
    state = workflow.wait(120)
    assert state.error.startswith("Server error 404") and "no-such-model" in state.error
    assert errors == [(state.error,)]
    if workflow.model("ae").trained:  # option names are checked once the model can run
        workflow.compute(film, "ae", options={"not_an_option": 3})
        state = workflow.wait(120)
        assert state.error.startswith("Server error 400") and "not_an_option" in state.error
    workflow.next_sample("no-such-strategy")
    state = workflow.wait(60)
    assert state.error.startswith("Server error") and state.result is None


def test_cancelled_retraining_stops_the_servers_training(server, workflow):
    version_before = workflow.model("ae").model_version
    progress = record(workflow.progress)
    workflow.retrain("ae", {**TRAINING, "epochs": 500}, poll_seconds=0.5)
    deadline = time.monotonic() + 120
    while not any("running" in message for _, message in progress) and time.monotonic() < deadline:
        workflow.poll()
        time.sleep(0.2)
    workflow.cancel()
    state = workflow.wait(60)
    assert state.cancelled and state.error is None
    assert workflow.client.train_status()["status"] == "STOPPED"
    assert workflow.client.train_status(check_if_running=True) is None
    workflow.connect(server[0])
    workflow.wait(60)
    assert workflow.model("ae").model_version == version_before  # nothing half-trained was published
