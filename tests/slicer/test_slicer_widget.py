"""The module's Qt widget (MedAnomaly.py) driven with a fake workflow: Qt is imitated (slicer_qt_shim), the scene is
slicer-core's real MRML. Checks the wiring: buttons start the workflow's steps, its signals update the panel and
the nodes, the threshold slider re-cuts the segment, a correction sends the edited segment, Reload reloads the
library."""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import slicer  # slicer-core (imported first by this folder's conftest)

MODULE_DIR = Path(__file__).resolve().parents[2] / "MedAnomalySlicer"
sys.path.insert(0, str(MODULE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_qt_shim  # noqa: E402
from MedAnomalyLib import AnomalyMapResult, AnomalyWorkflow, ModelInfo, read_volume, threshold_mask  # noqa: E402
from MedAnomalyLib.scene import AnomalyScene, prepare_bare_scene  # noqa: E402

SAMPLE_FILM = MODULE_DIR.parent / "sample_data" / "chest" / "kermany-pneumonia-person1000_bacteria_2931.jpeg"


class FakeWorkflow(AnomalyWorkflow):
    """The real job and signal machinery with the server replaced: the "anomaly map" is the film's own intensity
    scaled to 0..1, cut at 0.6. Records what the panel sends."""

    def __init__(self):
        super().__init__()
        self.sent_volumes, self.sent_masks = [], []

    def connect(self, server_url):
        info = ModelInfo("ae", description="convolutional autoencoder", kind="reconstruction", trained=True,
                         modalities=["CR", "DX"], body_parts=["CHEST"])

        def done(models):
            self.client = object()  # "connected"
            self.models, self.strategies = models, ["most_anomalous", "random"]
            self.models_changed.emit(self.models)

        return self._start("Connect", lambda context: [info], done)

    def compute(self, volume, model, options=None, image_id=None, name="image"):
        self._require_client()
        self.sent_volumes.append(volume)

        def work(context):
            heat = volume.array.astype(np.float32)
            heat = (heat - heat.min()) / max(float(np.ptp(heat)), 1e-6)
            details = {"score": float(heat.mean()), "pixel_threshold": 0.6, "model": model}
            return AnomalyMapResult("film-1", model, volume.with_array(heat),
                                    volume.with_array(threshold_mask(heat, 0.6)), details)

        return self._start("Compute anomaly map", work, self._set_result)

    def submit_correction(self, mask, tag="final"):
        self.sent_masks.append(np.asarray(mask).copy())
        return self._start("Submit correction", lambda context: {"image": self.result.image_id},
                           self.correction_submitted.emit)


def run_until_idle(widget, timeout=20.0):
    """What the panel's QTimer does: poll the workflow until the job is over."""
    deadline = time.monotonic() + timeout
    while widget.pollTimer.active:
        assert time.monotonic() < deadline, "the job did not finish"
        widget.onPoll()
        time.sleep(0.01)


@pytest.fixture()
def panel(monkeypatch):
    scene = slicer.vtkMRMLScene()
    logics = prepare_bare_scene(scene)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # one slice view's layers
    errors = slicer_qt_shim.install(scene, monkeypatch)
    monkeypatch.delitem(sys.modules, "MedAnomaly", raising=False)  # imported afresh, on the shims
    module = importlib.import_module("MedAnomaly")
    workflow = FakeWorkflow()

    class Widget(module.MedAnomalyWidget):
        def createLogic(self):
            return module.MedAnomalyLogic(workflow=workflow)

    widget = Widget(module_dir=str(MODULE_DIR))
    widget.setup()
    yield widget, workflow, scene, composite, errors, logics
    widget.cleanup()


def test_panel_drives_the_workflow_and_the_scene(panel):
    widget, workflow, scene, composite, errors, _ = panel
    ui = widget.ui
    assert not ui.computeButton.enabled and not ui.submitCorrectionButton.enabled  # nothing before connecting

    ui.computeButton.emit("clicked(bool)")
    assert errors and "Select an image" in errors[-1]

    ui.serverUrlLineEdit.text = "http://127.0.0.1:1"
    ui.connectButton.emit("clicked(bool)")
    run_until_idle(widget)
    assert ui.modelComboBox.items == ["ae"] and ui.computeButton.enabled
    assert "modalities: CR, DX" in ui.modelDescriptionLabel.text and "body parts: CHEST" in ui.modelDescriptionLabel.text
    assert ui.strategyComboBox.items == ["most_anomalous", "random"]

    film = AnomalyScene(scene).load_image(SAMPLE_FILM)
    ui.inputVolumeSelector.setCurrentNode(film)
    ui.computeButton.emit("clicked(bool)")
    run_until_idle(widget)
    logic_scene = widget.logic.scene
    sent = workflow.sent_volumes[-1]
    # the film's own voxels and geometry went out, as the library reads the file (not only node -> node)
    from_file = read_volume(SAMPLE_FILM)
    assert sent.same_grid(from_file) and np.array_equal(sent.array, from_file.array)
    assert logic_scene.heatmap_node is not None and logic_scene.input_node is film
    result = workflow.result
    np.testing.assert_array_equal(logic_scene.edited_mask(), result.label.array)
    assert ui.scoreLabel.text.startswith("Score")
    assert (ui.thresholdSlider.minimum, ui.thresholdSlider.maximum) == pytest.approx((0.0, 1.0))
    assert ui.thresholdSlider.value == pytest.approx(0.6)
    assert composite.GetBackgroundVolumeID() == film.GetID()
    assert composite.GetForegroundVolumeID() == logic_scene.heatmap_node.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(widget.parameters.validated_opacity())

    ui.thresholdSlider.value = 0.8
    ui.thresholdSlider.emit("valueChanged(double)", 0.8)
    np.testing.assert_array_equal(logic_scene.edited_mask(), result.heatmap.array >= 0.8)
    assert ui.thresholdLabel.text.startswith("Threshold 0.8")
    assert logic_scene.heatmap_node.GetDisplayNode().GetWindowLevelMin() == pytest.approx(0.8)

    ui.opacitySlider.value = 0.3
    ui.opacitySlider.emit("valueChanged(double)", 0.3)
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)

    edited = logic_scene.edited_mask()
    edited[:, :, : edited.shape[2] // 2] = 0  # the annotator erased the left half in the Segment Editor
    logic_scene.show_mask(edited)
    ui.submitCorrectionButton.emit("clicked(bool)")
    run_until_idle(widget)
    np.testing.assert_array_equal(workflow.sent_masks[-1], edited)
    assert "Correction saved" in ui.statusLabel.text and "film-1" in ui.statusLabel.text


def test_busy_panel_refuses_a_second_job_with_a_message(panel):
    widget, workflow, _, _, errors, _ = panel
    widget.ui.connectButton.emit("clicked(bool)")
    widget.ui.connectButton.emit("clicked(bool)")  # before the first one was polled to its end
    assert any("still running" in message for message in errors)
    run_until_idle(widget)


def test_reload_reloads_the_library(panel, monkeypatch):
    widget, *_ = panel
    for name in [name for name in sys.modules if name.startswith("MedAnomalyLib")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # the other tests get their copy back
    before = sys.modules["MedAnomalyLib.scene"]
    widget.onReload()
    assert widget.reloaded
    assert sys.modules["MedAnomalyLib.scene"] is not before  # a fresh copy of the library, not the old one
