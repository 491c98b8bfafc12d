"""MedAnomaly: anomaly maps from a MONAI Label server, shown, re-thresholded, corrected and learnt from in Slicer.

This file is the thin Slicer glue: widgets and their wiring. The workflow (REST client, jobs, thresholds, colour
tables, volume files) lives in the plain-Python package `MedAnomalyLib`, and what touches the MRML scene in
`MedAnomalyLib.scene`, both tested with pytest (the scene on slicer-core's real MRML) without the Slicer application.
"""
import importlib
import os
import sys

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

from MedAnomalyLib import COLOUR_MAPS, AnomalyWorkflow, MedAnomalyError, Parameters
from MedAnomalyLib.scene import SEGMENT_ID, AnomalyScene

SETTINGS_KEY = "MedAnomaly/parameters"
LIBRARY = "MedAnomalyLib"


class MedAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedAnomaly"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAnomaly developers"]
        self.parent.helpText = (
            "Anomaly maps of films and volumes from a MedAnomaly MONAI Label server: compute the map, adjust the "
            "threshold, correct the anomaly segment, submit it, retrain and review the next image chosen by "
            "active learning. See MedAnomalySlicer/README.md.")
        self.parent.acknowledgementText = "Built on 3D Slicer, MONAI and MONAI Label."


class MedAnomalyWidget(ScriptedLoadableModuleWidget):
    """Connects the panel to the logic: Qt events call the logic, logic signals update the panel."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = self.createLogic()
        self.parameters = Parameters.from_json(qt.QSettings().value(SETTINGS_KEY))
        self.sampleImageId = None  # datastore id of the volume loaded by "Next image"
        self.sampleVolumeNode = None

        self.ui.serverUrlLineEdit.text = self.parameters.server_url
        self.ui.colourMapComboBox.addItems(sorted(COLOUR_MAPS))
        self.ui.colourMapComboBox.currentText = self.parameters.colour_map
        self.ui.opacitySlider.value = self.parameters.validated_opacity()
        self.ui.epochsSpinBox.value = int(self.parameters.training.get("epochs", self.ui.epochsSpinBox.value))
        self.ui.minutesSpinBox.value = float(self.parameters.training.get("minutes", self.ui.minutesSpinBox.value))

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.serverUrlLineEdit.connect("returnPressed()", self.onConnect)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.computeButton.connect("clicked(bool)", self.onCompute)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onDisplayChanged)
        self.ui.colourMapComboBox.connect("currentIndexChanged(int)", self.onDisplayChanged)
        self.ui.editSegmentButton.connect("clicked(bool)", self.onEditSegment)
        self.ui.submitCorrectionButton.connect("clicked(bool)", self.onSubmitCorrection)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.nextImageButton.connect("clicked(bool)", self.onNextImage)
        self.ui.cancelButton.connect("clicked(bool)", self.logic.workflow.cancel)

        workflow = self.logic.workflow
        workflow.models_changed.connect(self.onModelsChanged)
        workflow.result_ready.connect(self.onResultReady)
        workflow.mask_changed.connect(self.onMaskChanged)
        workflow.correction_submitted.connect(self.onCorrectionSubmitted)
        workflow.training_finished.connect(self.onTrainingFinished)
        workflow.sample_ready.connect(self.onSampleReady)
        workflow.progress.connect(self.onProgress)
        workflow.error_occurred.connect(self.showError)
        workflow.busy_changed.connect(self.updateButtons)

        # Long calls run in a worker thread; this timer polls them from the UI thread.
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(200)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.updateButtons(False)

    def createLogic(self):
        """The logic the panel drives; a test overrides this to inject a workflow."""
        return MedAnomalyLogic()

    def cleanup(self):
        self.pollTimer.stop()
        self.saveParameters()
        self.logic.workflow.cleanup()

    def onReload(self):
        """Reload the library too: Slicer's Reload re-executes only this file."""
        loaded = sorted(name for name in sys.modules if name == LIBRARY or name.startswith(LIBRARY + "."))
        for name in loaded:
            del sys.modules[name]
        for name in loaded:
            importlib.import_module(name)
        ScriptedLoadableModuleWidget.onReload(self)

    # --- helpers ------------------------------------------------------------------------------------------------
    def saveParameters(self):
        self.parameters.server_url = self.ui.serverUrlLineEdit.text.strip()
        self.parameters.model = self.ui.modelComboBox.currentText
        self.parameters.strategy = self.ui.strategyComboBox.currentText or self.parameters.strategy
        self.parameters.colour_map = self.ui.colourMapComboBox.currentText
        self.parameters.opacity = self.ui.opacitySlider.value
        self.parameters.training = {"epochs": self.ui.epochsSpinBox.value, "minutes": self.ui.minutesSpinBox.value}
        qt.QSettings().setValue(SETTINGS_KEY, self.parameters.to_json())

    def run(self, start):
        """Start a job through `start()`; refusals (not connected, busy) become a message."""
        try:
            start()
        except MedAnomalyError as error:
            self.showError(str(error))
            return
        self.pollTimer.start()

    def showError(self, message):
        self.ui.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="MedAnomaly")

    def updateButtons(self, busy):
        workflow = self.logic.workflow
        connected = workflow.client is not None
        hasResult = workflow.result is not None
        self.ui.connectButton.enabled = not busy
        self.ui.computeButton.enabled = not busy and connected
        self.ui.submitCorrectionButton.enabled = not busy and hasResult
        self.ui.editSegmentButton.enabled = hasResult
        self.ui.thresholdSlider.enabled = hasResult
        self.ui.retrainButton.enabled = not busy and connected
        self.ui.nextImageButton.enabled = not busy and connected
        self.ui.cancelButton.enabled = busy
        if not busy:
            self.pollTimer.stop()

    # --- events -------------------------------------------------------------------------------------------------
    def onPoll(self):
        self.logic.workflow.poll()

    def onProgress(self, fraction, message):
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)  # busy indicator when the server gives no progress
        else:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def onConnect(self):
        self.saveParameters()
        self.run(lambda: self.logic.workflow.connect(self.parameters.server_url))

    def onModelsChanged(self, models):
        self.ui.modelComboBox.clear()
        for model in models:
            self.ui.modelComboBox.addItem(model.name)
        if self.parameters.model in [model.name for model in models]:
            self.ui.modelComboBox.currentText = self.parameters.model
        self.ui.strategyComboBox.clear()
        self.ui.strategyComboBox.addItems(self.logic.workflow.strategies)
        if self.parameters.strategy in self.logic.workflow.strategies:
            self.ui.strategyComboBox.currentText = self.parameters.strategy
        if not models:
            self.ui.modelDescriptionLabel.text = "The server serves no model."
        self.onModelChanged()

    def onModelChanged(self, index=None):
        name = self.ui.modelComboBox.currentText
        if name:
            self.ui.modelDescriptionLabel.text = self.logic.workflow.model(name).summary()

    def onCompute(self):
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if volumeNode is None:
            self.showError("Select an image (a film loaded as a single-slice volume, or a volume) first.")
            return
        self.saveParameters()
        if not self.parameters.model:
            self.showError("Connect to a server and choose a model first.")
            return
        self.logic.scene.input_node = volumeNode
        imageId = self.sampleImageId if volumeNode is self.sampleVolumeNode else None
        self.run(lambda: self.logic.workflow.compute(
            None if imageId else self.logic.scene.volume_from_node(volumeNode), self.parameters.model,
            self.parameters.inference_options, image_id=imageId, name=volumeNode.GetName()))

    def onResultReady(self, result):
        scale = self.logic.workflow.scale
        self.logic.showResult(result, self.parameters)
        self.ui.scoreLabel.text = result.summary()
        wasBlocked = self.ui.thresholdSlider.blockSignals(True)
        # Enough decimals for one slider step, whatever the heatmap's range (0..0.01 or 0..100).
        self.ui.thresholdSlider.decimals = max(2, 1 - int(np.floor(np.log10(scale.single_step))))
        self.ui.thresholdSlider.minimum = scale.minimum
        self.ui.thresholdSlider.maximum = scale.maximum
        self.ui.thresholdSlider.singleStep = scale.single_step
        self.ui.thresholdSlider.blockSignals(wasBlocked)

    def onThresholdChanged(self, value):
        if self.logic.workflow.result is not None:
            self.logic.workflow.set_threshold(value)  # local: never calls the server

    def onMaskChanged(self, mask, threshold):
        wasBlocked = self.ui.thresholdSlider.blockSignals(True)
        self.ui.thresholdSlider.value = threshold
        self.ui.thresholdSlider.blockSignals(wasBlocked)
        self.ui.thresholdLabel.text = self.logic.workflow.threshold_summary()
        self.logic.scene.show_mask(mask)
        self.logic.updateDisplay(self.parameters, threshold)

    def onDisplayChanged(self, value=None):
        self.parameters.opacity = self.ui.opacitySlider.value
        self.parameters.colour_map = self.ui.colourMapComboBox.currentText
        self.logic.updateDisplay(self.parameters, self.logic.workflow.threshold)

    def onEditSegment(self):
        scene = self.logic.scene
        if scene.segmentation_node is None:
            self.showError("Compute an anomaly map first.")
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(scene.segmentation_node)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # Slicer < 5.4
        setSource(scene.input_node or scene.heatmap_node)
        editor.setCurrentSegmentID(SEGMENT_ID)

    def onSubmitCorrection(self):
        try:
            mask = self.logic.scene.edited_mask()
        except MedAnomalyError as error:
            self.showError(str(error))
            return
        self.run(lambda: self.logic.workflow.submit_correction(mask, tag=self.parameters.label_tag))

    def onCorrectionSubmitted(self, answer):
        self.ui.statusLabel.text = f"Correction saved on the server for {answer.get('image', 'the image')}."

    def onRetrain(self):
        self.saveParameters()
        self.run(lambda: self.logic.workflow.retrain(self.parameters.model, dict(self.parameters.training),
                                                     poll_seconds=self.parameters.poll_seconds))

    def onTrainingFinished(self, answer):
        stats = answer.get("stats") or {}
        version = stats.get("model_version", "a new version")
        self.ui.statusLabel.text = f"Training done: {self.parameters.model} is now {version}."
        self.onConnect()  # refresh the model list (trained flags, thresholds)

    def onNextImage(self):
        self.saveParameters()
        self.run(lambda: self.logic.workflow.next_sample(self.parameters.strategy, self.parameters.model or None))

    def onSampleReady(self, sample):
        try:
            node = self.logic.scene.load_image(sample.path, sample.image_id)
        except MedAnomalyError as error:
            self.showError(f"Could not load {sample.image_id}: {error}")
            return
        self.sampleImageId, self.sampleVolumeNode = sample.image_id, node
        self.ui.inputVolumeSelector.setCurrentNode(node)
        score = sample.details.get("score")
        self.ui.statusLabel.text = f"Next image: {sample.image_id}" + (
            f" (score {score:.4g})" if isinstance(score, (int, float)) else "")


class MedAnomalyLogic(ScriptedLoadableModuleLogic):
    """The workflow (server calls, jobs) and the scene (nodes). Usable from the Python console without the panel;
    `workflow` is injectable, so the panel can be tested without a server."""

    def __init__(self, workflow=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.workflow = workflow if workflow is not None else AnomalyWorkflow()
        self.scene = AnomalyScene(slicer.mrmlScene)

    def showResult(self, result, parameters):
        """Heatmap over the image in the slice views, labelmap as the segment to edit."""
        self.scene.show_result(result, parameters.colour_map, parameters.transparent_below)
        self.scene.show_in_slice_views(parameters.validated_opacity())

    def updateDisplay(self, parameters, threshold):
        self.scene.update_heatmap_display(parameters.colour_map, parameters.transparent_below, threshold)
        self.scene.show_in_slice_views(parameters.validated_opacity())


class MedAnomalyTest(ScriptedLoadableModuleTest):
    """End to end inside Slicer against a running server: set MEDANOMALY_SERVER_URL (else the test is skipped).

    MEDANOMALY_TEST_IMAGE: an image file to score (default: the server's next active-learning sample).
    MEDANOMALY_TEST_MODEL: the model (default: the first trained one). MEDANOMALY_TEST_TRAIN=1 also retrains.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow()

    def wait(self, logic, timeout=900):
        state = logic.workflow.wait(timeout)
        self.assertIsNotNone(state)
        self.assertIsNone(state.error, state.error)
        return state

    def test_workflow(self):
        url = os.environ.get("MEDANOMALY_SERVER_URL")
        if not url:
            self.delayDisplay("MEDANOMALY_SERVER_URL is not set: MedAnomaly end-to-end test skipped")
            return
        logic = MedAnomalyLogic()
        workflow = logic.workflow
        workflow.connect(url)
        self.wait(logic)
        trained = [model.name for model in workflow.models if model.trained]
        self.assertTrue(trained, "the server has no trained model")
        model = os.environ.get("MEDANOMALY_TEST_MODEL", trained[0])

        imageId = None
        path = os.environ.get("MEDANOMALY_TEST_IMAGE")
        if not path:
            workflow.next_sample("random", model)
            sample = self.wait(logic).result
            path, imageId = str(sample.path), sample.image_id
        inputNode = slicer.util.loadVolume(path, {"singleFile": True})
        logic.scene.input_node = inputNode
        self.delayDisplay(f"Scoring {path} with {model}")
        workflow.compute(None if imageId else logic.scene.volume_from_node(inputNode), model, image_id=imageId)
        result = self.wait(logic).result
        logic.showResult(result, Parameters())
        # A colour film loads as a vector volume: its grid is the array's first three axes.
        self.assertEqual(result.heatmap.shape, slicer.util.arrayFromVolume(inputNode).shape[:3])

        threshold = float(np.percentile(result.heatmap.array, 95))
        mask = workflow.set_threshold(threshold)
        logic.scene.show_mask(mask)
        np.testing.assert_array_equal(logic.scene.edited_mask() > 0, result.heatmap.array >= threshold)

        workflow.submit_correction(logic.scene.edited_mask())
        self.assertEqual(self.wait(logic).result["image"], result.image_id)
        if os.environ.get("MEDANOMALY_TEST_TRAIN") == "1":
            workflow.retrain(model, {"epochs": 1, "minutes": 2})
            self.wait(logic)
        workflow.cleanup()
        self.delayDisplay("MedAnomaly end-to-end test passed")
