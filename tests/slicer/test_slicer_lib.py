"""MedAnomalyLib (the Slicer module's plain-Python logic) without Slicer and without a server."""
from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedAnomalySlicer"))

from MedAnomalyLib import (AnomalyWorkflow, Job, JobCancelled, MedAnomalyError, ModelInfo,  # noqa: E402
                           MonaiLabelClient, Parameters, ServerError, ServerUnreachable, Signal, ThresholdScale,
                           Volume, VolumeFormatError, colour_lut, display_window, make_image_id,
                           parse_slicer_colour_table, read_volume, slicer_colour_table_text, threshold_mask,
                           write_volume)
from MedAnomalyLib.client import parse_multipart  # noqa: E402
from MedAnomalyLib.heatmap import blend_overlay  # noqa: E402


def film_pixels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))


# --- volumes ------------------------------------------------------------------------------------------------------
def test_film_as_single_slice_nrrd_matches_simpleitk(kermany_films, tmp_path):
    pixels = film_pixels(kermany_films["NORMAL"][0])
    film = Volume.film(pixels, spacing=(0.5, 0.25))
    assert film.shape == (1,) + pixels.shape
    path = write_volume(film, tmp_path / "film.nrrd")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (pixels.shape[1], pixels.shape[0], 1)
    assert image.GetSpacing() == pytest.approx((0.25, 0.5, 1.0))
    assert image.GetDirection() == pytest.approx(tuple(np.eye(3).ravel()))  # Slicer's film: LPS-aligned axes
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], pixels)
    back = read_volume(path)
    assert back.same_grid(film)
    np.testing.assert_array_equal(back.array, film.array)


def test_colour_film_from_slicer_becomes_grey(kermany_films):
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(kermany_films["NORMAL"][2])))  # Kermany JPEGs are RGB
    assert rgb.ndim == 3 and rgb.shape[-1] == 3
    volume = Volume.from_slicer_array(rgb[np.newaxis], np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert volume.shape == (1,) + rgb.shape[:2]
    np.testing.assert_allclose(volume.array[0], rgb.astype(np.float32).mean(axis=-1))
    with pytest.raises(VolumeFormatError, match="5 components"):
        Volume.from_slicer_array(np.zeros((1, 4, 4, 5)), np.eye(4))


def test_oblique_volume_round_trips_through_nrrd_and_nifti(data_root, tmp_path):
    image = sitk.ReadImage(str(sorted((data_root / "nifti").rglob("*.nii*"))[0]))
    source = read_volume(sorted((data_root / "nifti").rglob("*.nii*"))[0])
    assert source.shape == sitk.GetArrayFromImage(image).shape
    # An oblique, anisotropic grid catches axis-order and LPS/RAS mistakes that an identity grid hides.
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.7, 1.3, 2.0])
    matrix[:3, 3] = [12.5, -40.0, 7.0]
    volume = Volume(source.array, matrix)
    for name in ("v.nrrd", "v.nii.gz"):
        back = read_volume(write_volume(volume, tmp_path / name))
        assert back.same_grid(volume), name
        np.testing.assert_array_equal(back.array, volume.array)
    # SimpleITK's view of our NRRD: the same physical point for a voxel (LPS = RAS with x, y negated).
    written = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    i, j, k = 3, 5, 2
    lps = written.TransformIndexToPhysicalPoint((i, j, k))
    ras = matrix @ np.array([i, j, k, 1.0])
    assert lps == pytest.approx((-ras[0], -ras[1], ras[2]))


def test_itk_written_2d_nrrd_reads_as_one_slice(kermany_films, tmp_path):
    image = sitk.ReadImage(str(kermany_films["PNEUMONIA"][0]), sitk.sitkFloat32)
    image.SetSpacing((0.3, 0.2))
    image.SetOrigin((4.0, -2.0))
    sitk.WriteImage(image, str(tmp_path / "film.nrrd"))
    sitk.WriteImage(image, str(tmp_path / "film.nii.gz"))
    from_nrrd = read_volume(tmp_path / "film.nrrd")
    from_nifti = read_volume(tmp_path / "film.nii.gz")
    assert from_nrrd.shape == (1,) + sitk.GetArrayFromImage(image).shape
    assert from_nrrd.same_grid(from_nifti)
    assert from_nrrd.spacing == pytest.approx((0.3, 0.2, 1.0))


def test_bad_volume_files_raise_typed_errors(kermany_films, tmp_path):
    with pytest.raises(VolumeFormatError, match="cannot read x.nrrd"):
        read_volume(_write(tmp_path / "x.nrrd", kermany_films["NORMAL"][0].read_bytes()))
    header = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n"
    with pytest.raises(VolumeFormatError, match="cannot read short.nrrd"):
        read_volume(_write(tmp_path / "short.nrrd", header + b"\0" * 10))
    with pytest.raises(VolumeFormatError, match="cannot read notes.nrrd"):
        read_volume(_write(tmp_path / "notes.nrrd", b"a text file, not an image\n"))
    with pytest.raises(VolumeFormatError, match="cannot write label.unknown"):
        write_volume(Volume(np.zeros((1, 4, 4), dtype=np.uint8), np.eye(4)), tmp_path / "label.unknown")
    assert not list(tmp_path.glob("*label*"))  # no partial file left behind
    with pytest.raises(VolumeFormatError):
        Volume(np.zeros((2, 2, 2, 2)), np.eye(4))
    with pytest.raises(VolumeFormatError, match="does not match"):
        Volume(np.zeros((1, 4, 4)), np.eye(4)).with_array(np.zeros((1, 4, 5)))


def test_colour_film_file_reads_as_one_grey_slice(kermany_films):
    path = kermany_films["NORMAL"][2]  # Kermany JPEGs are RGB
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    volume = read_volume(path)
    assert volume.shape == (1,) + rgb.shape[:2]
    np.testing.assert_allclose(volume.array[0], rgb.astype(np.float32).mean(axis=-1))


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


# --- thresholds and colours ---------------------------------------------------------------------------------------
def test_threshold_mask_is_heatmap_at_least_threshold(kermany_films):
    heatmap = film_pixels(kermany_films["PNEUMONIA"][1]) / 255.0  # a real intensity field as a stand-in map
    heatmap[0, :5] = np.nan
    for threshold in (0.2, float(np.nanmedian(heatmap)), 0.9):
        mask = threshold_mask(heatmap, threshold)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask.astype(bool), np.nan_to_num(heatmap, nan=-1) >= threshold)
    assert threshold_mask(heatmap, np.nanmax(heatmap)).sum() >= 1  # the maximum itself is flagged (>=)
    assert threshold_mask(heatmap, -np.inf)[0, :5].sum() == 0  # NaN is never flagged


def test_threshold_scale_maps_slider_positions_both_ways():
    heatmap = np.linspace(0.02, 0.5, 1000)
    scale = ThresholdScale.for_heatmap(heatmap, threshold=0.7)
    assert (scale.minimum, scale.maximum) == pytest.approx((0.02, 0.7))  # the calibrated cut stays reachable
    assert scale.threshold(0) == pytest.approx(0.02)
    assert scale.threshold(scale.steps) == pytest.approx(0.7)
    assert scale.threshold(scale.position(0.31)) == pytest.approx(0.31, abs=scale.single_step)
    assert scale.position(-5) == 0 and scale.position(99) == scale.steps
    flat = ThresholdScale.for_heatmap(np.full(10, 0.3))
    assert flat.maximum > flat.minimum


def test_colour_table_is_rgba_with_transparent_low_end_and_round_trips_as_ctbl():
    lut = colour_lut("anomaly", 256, transparent_below=0.1)
    assert lut.shape == (256, 4) and lut.dtype == np.uint8
    assert (lut[:25, 3] == 0).all() and (lut[26:, 3] == 255).all()
    brightness = lut[:, :3].astype(int).sum(axis=1)
    assert (np.diff(brightness) >= 0).all()  # a heat scale only brightens
    text = slicer_colour_table_text(lut, "Heat")
    assert text.splitlines()[2].split()[:2] == ["0", "Heat0"]
    np.testing.assert_array_equal(parse_slicer_colour_table(text), lut)
    with pytest.raises(ValueError, match="unknown colour map"):
        colour_lut("rainbow-unicorn")


def test_display_window_starts_at_threshold():
    heatmap = np.linspace(0, 1, 10001)
    assert display_window(heatmap, 0.4) == pytest.approx((0.4, 0.9999), abs=1e-3)
    assert display_window(heatmap)[0] == 0.0


def test_overlay_blends_like_slicer_foreground(kermany_films):
    film = film_pixels(kermany_films["NORMAL"][3])
    heatmap = np.tile(np.linspace(0.0, 1.0, film.shape[1]), (film.shape[0], 1))
    lut = colour_lut("anomaly", 256, transparent_below=0.5)
    hidden = blend_overlay(film, heatmap, lut, (0.0, 1.0), opacity=0.0)
    assert (hidden[..., 0] == hidden[..., 1]).all() and (hidden[..., 1] == hidden[..., 2]).all()  # grey only
    shown = blend_overlay(film, heatmap, lut, (0.0, 1.0), opacity=1.0)
    left, right = slice(0, film.shape[1] // 3), slice(-1, None)  # the last column holds the maximum
    np.testing.assert_array_equal(shown[:, left], hidden[:, left])  # below the transparent cut: the film
    np.testing.assert_array_equal(shown[:, right], np.broadcast_to(lut[-1, :3], shown[:, right].shape))
    with pytest.raises(ValueError, match="same 2D grid"):
        blend_overlay(film, heatmap[:, 1:], lut, (0, 1))


# --- signals, jobs, parameters ------------------------------------------------------------------------------------
def test_signal_calls_connected_callbacks_until_disconnected():
    signal, seen = Signal("value"), []
    signal.connect(seen.append)
    signal.connect(seen.append)  # once only
    signal.emit(1)
    signal.disconnect(seen.append)
    signal.emit(2)
    assert seen == [1]


def test_job_reports_progress_result_error_and_cancel():
    gate = threading.Event()

    def work(context):
        context.report(0.5, "half way")
        gate.wait(5)
        return 42

    job = Job("demo", work).start()
    deadline = time.monotonic() + 5
    while job.state().message != "half way" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state().fraction == 0.5 and not job.done
    gate.set()
    assert job.result(5) == 42 and job.state().fraction == 1.0

    failing = Job("fail", lambda context: (_ for _ in ()).throw(ServerError("model X is not trained", 409))).start()
    state = failing.wait(5)
    assert state.error == "Server error 409: model X is not trained" and state.done
    with pytest.raises(ServerError):
        failing.result()

    def endless(context):
        while True:
            context.sleep(0.05)

    cancelled = Job("endless", endless).start()
    cancelled.cancel()
    state = cancelled.wait(5)
    assert state.cancelled and state.error is None
    with pytest.raises(JobCancelled):
        cancelled.result()


def test_parameters_survive_json_and_ignore_broken_settings():
    parameters = Parameters(server_url="http://10.0.0.1:9000", model="ae", training={"epochs": 3}, opacity=3.0)
    assert Parameters.from_json(parameters.to_json()) == parameters
    assert parameters.validated_opacity() == 1.0
    assert Parameters.from_json("{not json") == Parameters()
    assert Parameters.from_json('{"model": "vae", "obsolete": 1}').model == "vae"


# --- client pieces that need no server ----------------------------------------------------------------------------
def test_multipart_round_trip_and_image_ids(kermany_films):
    payload = kermany_films["NORMAL"][0].read_bytes()
    request = requests.Request("PUT", "http://127.0.0.1/x", data={"params": '{"a": 1}'},
                               files={"file": ("x.jpeg", payload)}).prepare()
    parts = parse_multipart(request.body, request.headers["Content-Type"])
    assert parts["params"] == (None, b'{"a": 1}')
    assert parts["file"] == ("x.jpeg", payload)
    image_id = make_image_id("Chest film / 2 (copy)")
    assert image_id.startswith("Chest_film_2_copy-") and set(image_id) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert make_image_id("Chest") != make_image_id("Chest")


def test_model_info_from_info_entry():
    entry = {"type": "anomaly", "dimension": 2, "description": "conv autoencoder",
             "config": {"threshold": None, "repeats": 4},
             "medanomaly": {"kind": "reconstruction", "trained": False, "inference_options": ["repeats"]}}
    model = ModelInfo.from_info("ae", entry)
    assert (model.kind, model.trained, model.options) == ("reconstruction", False, {"repeats": 4})
    assert model.summary() == "ae (reconstruction), not trained yet: conv autoencoder"
    entry["medanomaly"].update(modalities=["CR", "DX"], body_parts=["CHEST"])
    assert ModelInfo.from_info("ae", entry).summary().endswith("; modalities: CR, DX; body parts: CHEST")
    entry["medanomaly"].update(source="shipped", card={"summary": "kermany; image AUROC 0.917",
                                                       "failure_modes": ["border lights up"]}, trained=True,
                               model_version="ae-v1-0123")
    from MedAnomalyLib.web import model_card
    card = model_card(ModelInfo.from_info("ae", entry))
    assert "Card: kermany; image AUROC 0.917. Known weakness: border lights up. Checkpoint: shipped" in card
    assert card.endswith("Version ae-v1-0123")


def test_unreachable_server_and_bad_urls_are_typed_errors():
    with pytest.raises(ServerUnreachable, match="no server URL"):
        MonaiLabelClient("  ")
    with pytest.raises(ServerUnreachable, match="http://host:port"):
        MonaiLabelClient("ftp://example")
    import socket
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}"):
        MonaiLabelClient(f"127.0.0.1:{port}", timeout=5).info()


class _FastApiStyleErrors(http.server.BaseHTTPRequestHandler):
    """Answers like FastAPI does on errors, to check the messages the panel would show."""

    def do_GET(self):
        bodies = {"/info/": (409, {"detail": "model ae is not trained yet; POST /train/ae"}),
                  "/datastore/": (422, {"detail": [{"loc": ["query", "output"], "msg": "value is not valid"}]}),
                  "/train/": (404, {"detail": "no training task"})}
        status, body = bodies.get(self.path.split("?")[0], (200, {"ok": True}))
        if self.path.startswith("/html"):
            status, payload = 200, b"<html>not json</html>"
        else:
            payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_error_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FastApiStyleErrors)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_errors_carry_the_servers_message(fake_error_server):
    client = MonaiLabelClient(fake_error_server)
    with pytest.raises(ServerError) as error:
        client.info()
    assert error.value.status == 409 and error.value.message == "model ae is not trained yet; POST /train/ae"
    with pytest.raises(ServerError, match="query.output: value is not valid"):
        client.datastore()
    assert client.train_status() is None  # 404 here means: never trained since the server started
    with pytest.raises(ServerError, match="did not answer JSON"):
        client._json("GET", "/html")


def test_workflow_refuses_steps_out_of_order_with_messages(fake_error_server):
    workflow = AnomalyWorkflow()
    try:
        with pytest.raises(MedAnomalyError, match="connect"):
            workflow.compute(Volume(np.zeros((1, 4, 4)), np.eye(4)), "ae")
        with pytest.raises(MedAnomalyError, match="compute an anomaly map"):
            workflow.set_threshold(0.5)
        errors = []
        workflow.error_occurred.connect(errors.append)
        workflow.connect(fake_error_server)
        with pytest.raises(MedAnomalyError, match="still running"):
            workflow.connect(fake_error_server)
        state = workflow.wait(10)
        assert state.error and errors == ["Server error 409: model ae is not trained yet; POST /train/ae"]
        assert workflow.client is None and not workflow.busy  # a failed connect leaves the panel disconnected
    finally:
        workflow.cleanup()


def test_training_fraction_follows_the_servers_per_step_progress_line():
    """The server prints medanomaly's per-step progress line into the train log; the module turns it into a
    fraction that moves within an epoch, not only between epochs."""
    from MedAnomalyLib.logic import _training_fraction
    from medanomaly.training import Progress

    def status_after(epoch, step):
        line = Progress(epoch=epoch, epochs=4, step=step, steps_per_epoch=10, steps_done=(epoch - 1) * 10 + step,
                        loss=0.1, elapsed_seconds=30.0, budget_left_seconds=90.0, epoch_seconds_estimate=20.0,
                        seconds_per_step=2.0).line()
        return {"status": "RUNNING", "details": ["[ae] training on 8 image(s)", f"[ae] {line}"]}

    early, later = (_training_fraction(status_after(2, step), time.monotonic(), None, 4) for step in (1, 9))
    assert early == pytest.approx((1 + 0.1) / 4) and later == pytest.approx((1 + 0.9) / 4)
    assert "min left" in status_after(2, 1)["details"][-1]
