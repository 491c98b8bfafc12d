"""MedAnomaly in the browser: the Slicer module's workflow on trame-slicer (Slicer's MRML, slice views and segment
editor, rendered on the server and streamed to the page), served on 127.0.0.1.

    cd MedAnomalySlicer && python -m MedAnomalyLib.web --server-url http://127.0.0.1:8000 [--port 8080]

It reuses the library (`AnomalyWorkflow` for the server calls, `AnomalyScene` for the nodes): no second copy of the
workflow. Limits (checked before a file is read): uploads up to MAX_UPLOAD_MB, volumes up to MAX_VOXELS voxels.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import SimpleITK as sitk

from .client import ModelInfo
from .errors import MedAnomalyError
from .heatmap import COLOUR_MAPS
from .logic import AnomalyWorkflow
from .parameters import DEFAULT_SERVER_URL, Parameters
from .scene import SEGMENT_ID, AnomalyScene

MAX_UPLOAD_MB = 64
MAX_VOXELS = 20_000_000  # a 256 x 256 x 300 volume; a BraTS case (240 x 240 x 155) is 8.9 M
TOOLS = ("none", "paint", "erase")


def image_voxels(path) -> int:
    """Voxel count from the file's header alone, so an oversized volume is refused before it is read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise MedAnomalyError(f"{Path(path).name} is not an image this viewer can read (PNG, JPEG, DICOM, NIfTI, "
                              f"NRRD or MHA)") from None
    count = 1
    for size in reader.GetSize():
        count *= int(size)
    return count


class WebViewer:
    """The page and its wiring; the work is done by the workflow and the scene logic."""

    def __init__(self, server=None, server_url: str = DEFAULT_SERVER_URL, workflow: AnomalyWorkflow | None = None):
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server or get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout("Axial Only")
        self.scene = AnomalyScene(self.slicer_app.scene)
        self.workflow = workflow or AnomalyWorkflow()
        self.parameters = Parameters(server_url=server_url)
        self.sample_image_id = None  # datastore id of the image loaded by "Next image"
        self._upload_dir = Path(tempfile.mkdtemp(prefix="medanomaly-web-"))
        self._init_state()
        self._connect_workflow()
        self._build_ui()

    # --- state and wiring ---------------------------------------------------------------------------------------
    def _init_state(self) -> None:
        state = self.state
        state.trame__title = "MedAnomaly"
        state.trame__favicon = None  # the page fetches nothing from outside
        state.update({
            "server_url": self.parameters.server_url, "connected": False, "busy": False, "progress": 0,
            "progress_known": True, "status": "Not connected", "error": "", "models": [], "model": None,
            "model_card": "", "strategies": [], "strategy": "most_anomalous", "image_name": "", "has_image": False,
            "has_result": False, "score": "", "threshold": 0.0, "threshold_min": 0.0, "threshold_max": 1.0,
            "threshold_step": 0.01, "threshold_text": "", "opacity": self.parameters.opacity,
            "colour_map": self.parameters.colour_map, "colour_maps": sorted(COLOUR_MAPS), "tool": "none",
            "brush_mm": 10.0, "epochs": 2, "minutes": 5.0, "upload": None, "limits":
                f"Uploads up to {MAX_UPLOAD_MB} MB; volumes up to {MAX_VOXELS / 1e6:.0f} M voxels.",
        })
        state.change("threshold")(self.on_threshold)
        state.change("opacity", "colour_map")(self.on_display)
        state.change("tool", "brush_mm")(self.on_tool)
        state.change("model")(self.on_model)
        state.change("upload")(self.on_upload)
        self.ctrl.on_server_ready.add(self._start_polling)

    def _connect_workflow(self) -> None:
        workflow = self.workflow
        workflow.models_changed.connect(self.on_models)
        workflow.result_ready.connect(self.on_result)
        workflow.mask_changed.connect(self.on_mask)
        workflow.correction_submitted.connect(
            lambda answer: self._status(f"Correction saved on the server for {answer.get('image', 'the image')}."))
        workflow.training_finished.connect(self.on_trained)
        workflow.sample_ready.connect(self.on_sample)
        workflow.progress.connect(self.on_progress)
        workflow.error_occurred.connect(self.show_error)
        workflow.busy_changed.connect(lambda busy: setattr(self.state, "busy", busy))

    def _start_polling(self, **_) -> None:
        asyncio.get_event_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        """The web counterpart of the module's QTimer: outcomes of jobs are delivered in the server's loop."""
        while True:
            if self.workflow.busy:
                with self.state:
                    self.workflow.poll()
            await asyncio.sleep(0.1)

    def _run(self, start) -> None:
        self.state.error = ""
        try:
            start()
        except MedAnomalyError as error:
            self.show_error(str(error))

    def _render(self) -> None:
        for view in self.slicer_app.view_manager.get_views():
            view.schedule_render()

    def _status(self, message: str) -> None:
        self.state.status = message

    def show_error(self, message: str) -> None:
        self.state.error = message
        self.state.status = "Error"

    # --- actions (buttons) --------------------------------------------------------------------------------------
    def connect(self, server_url: str | None = None) -> None:
        """`server_url` comes with the click: the field's state update may arrive after the click itself."""
        url = (server_url or self.state.server_url or "").strip()
        self.state.server_url = self.parameters.server_url = url
        self._run(lambda: self.workflow.connect(url))

    def compute(self) -> None:
        node = self.scene.input_node
        if node is None:
            self.show_error("Load an image first (upload a film or a volume, or press Next image).")
            return
        if not self.state.model:
            self.show_error("Connect to a server and choose a model first.")
            return
        image_id = self.sample_image_id
        self._run(lambda: self.workflow.compute(None if image_id else self.scene.volume_from_node(node),
                                                self.state.model, image_id=image_id, name=node.GetName()))

    def submit(self) -> None:
        try:
            mask = self.scene.edited_mask()
        except MedAnomalyError as error:
            self.show_error(str(error))
            return
        self._run(lambda: self.workflow.submit_correction(mask, tag=self.parameters.label_tag))

    def retrain(self, epochs=None, minutes=None) -> None:
        try:
            params = {"epochs": int(epochs if epochs is not None else self.state.epochs),
                      "minutes": float(minutes if minutes is not None else self.state.minutes)}
        except (TypeError, ValueError):
            self.show_error("Epochs and minutes must be numbers.")
            return
        self._run(lambda: self.workflow.retrain(self.state.model, params, poll_seconds=1.0))

    def next_image(self) -> None:
        self._run(lambda: self.workflow.next_sample(self.state.strategy, self.state.model or None))

    def cancel(self) -> None:
        self.workflow.cancel()

    # --- state changes ------------------------------------------------------------------------------------------
    def on_upload(self, upload=None, **_) -> None:
        if not upload:
            return
        upload = upload[0] if isinstance(upload, list) else upload
        name = Path(str(upload.get("name") or "image")).name
        try:
            if int(upload.get("size") or 0) > MAX_UPLOAD_MB * 1024 * 1024:
                raise MedAnomalyError(f"{name} is {int(upload['size']) / 2**20:.0f} MB: uploads are limited to "
                                      f"{MAX_UPLOAD_MB} MB")
            content = upload.get("content") or b""
            if isinstance(content, list):  # large files arrive in chunks
                content = b"".join(content)
            path = self._upload_dir / name
            path.write_bytes(content)
            self.load_image(path, name)
        except MedAnomalyError as error:
            self.show_error(str(error))
        finally:
            self.state.upload = None

    def load_image(self, path, name: str | None = None, image_id: str | None = None) -> None:
        """Refuse oversized volumes from the header, then load into the scene and show in the slice views."""
        voxels = image_voxels(path)
        if voxels > MAX_VOXELS:
            raise MedAnomalyError(f"{Path(path).name} has {voxels:,} voxels: this viewer takes volumes up to "
                                  f"{MAX_VOXELS:,} voxels (crop or downsample it, or use 3D Slicer)")
        node = self.scene.load_image(path, name)
        self.sample_image_id = image_id
        self.scene.show_in_slice_views(self.state.opacity)
        for composite in self._composites():
            composite.SetForegroundVolumeID(None)  # the previous image's heatmap
        self.slicer_app.display_manager.reset_views()
        self.state.update({"image_name": node.GetName(), "has_image": True, "has_result": False, "error": "",
                           "status": f"Loaded {node.GetName()}", "score": "", "threshold_text": ""})
        self._render()

    def _composites(self):
        nodes = self.slicer_app.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        return [nodes.GetItemAsObject(index) for index in range(nodes.GetNumberOfItems())]

    def on_model(self, model=None, **_) -> None:
        if not model:
            return
        try:
            self.state.model_card = model_card(self.workflow.model(model))
        except MedAnomalyError:
            self.state.model_card = ""

    def on_threshold(self, threshold=None, **_) -> None:
        if self.workflow.result is not None and threshold is not None and threshold != self.workflow.threshold:
            self.workflow.set_threshold(float(threshold))  # local: never calls the server

    def on_display(self, **_) -> None:
        self.scene.update_heatmap_display(self.state.colour_map, self.parameters.transparent_below,
                                          self.workflow.threshold)
        self.scene.show_in_slice_views(float(self.state.opacity))
        self._render()

    def on_tool(self, tool=None, **_) -> None:
        from trame_slicer.segmentation import (BrushDiameterMode, SegmentationEffectErase, SegmentationEffectNoTool,
                                               SegmentationEffectPaint)

        editor = self.slicer_app.segmentation_editor
        if editor.active_segmentation is None:
            return
        effect_type = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase}.get(
            self.state.tool, SegmentationEffectNoTool)
        effect = editor.set_active_effect_type(effect_type)
        if effect is not None and hasattr(effect, "set_brush_diameter"):
            effect.set_brush_diameter(float(self.state.brush_mm), BrushDiameterMode.Absolute)

    # --- workflow signals ---------------------------------------------------------------------------------------
    def on_models(self, models) -> None:
        self.state.models = [model.name for model in models]
        self.state.strategies = list(self.workflow.strategies)
        trained = [model.name for model in models if model.trained]
        self.state.model = self.state.model if self.state.model in self.state.models else (
            trained[0] if trained else (models[0].name if models else None))
        self.on_model(self.state.model)
        self.state.connected = True
        self._status(f"Connected to {self.workflow.client.server_url}: {len(models)} models")

    def on_result(self, result) -> None:
        scale = self.workflow.scale
        self.scene.show_result(result, self.state.colour_map, self.parameters.transparent_below)
        self.scene.show_in_slice_views(float(self.state.opacity))
        editor = self.slicer_app.segmentation_editor
        editor.set_active_segmentation(self.scene.segmentation_node, self.scene.input_node or self.scene.heatmap_node)
        editor.set_active_segment_id(SEGMENT_ID)
        self.on_tool()
        self.state.update({"has_result": True, "score": result.summary(), "threshold_min": scale.minimum,
                           "threshold_max": scale.maximum, "threshold_step": scale.single_step})
        self._status(f"Anomaly map of {result.image_id} by {result.model}")

    def on_mask(self, mask, threshold) -> None:
        self.scene.show_mask(mask)
        self.scene.update_heatmap_display(self.state.colour_map, self.parameters.transparent_below, threshold)
        self.state.threshold = threshold
        self.state.threshold_text = self.workflow.threshold_summary()
        self._render()

    def on_trained(self, answer) -> None:
        version = (answer.get("stats") or {}).get("model_version", "a new version")
        self._status(f"Training done: {self.state.model} is now {version}.")
        self.state.progress = 100
        self.connect()  # refresh the model cards (trained, thresholds, version)

    def on_sample(self, sample) -> None:
        try:
            self.load_image(sample.path, sample.image_id, image_id=sample.image_id)
        except MedAnomalyError as error:
            self.show_error(f"Could not load {sample.image_id}: {error}")
            return
        score = sample.details.get("score")
        self._status(f"Next image: {sample.image_id}" + (f" (score {score:.4g})" if isinstance(score, float) else ""))

    def on_progress(self, fraction, message) -> None:
        self.state.progress_known = fraction is not None
        self.state.progress = int(round(100 * fraction)) if fraction is not None else 0
        if message:
            self.state.status = message

    # --- page ---------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("MedAnomaly")
            layout.drawer.width = 360
            with layout.toolbar:
                v3.VSpacer()
                html.Div("{{ status }}", id="status", classes="text-body-2 mr-4")
            with layout.drawer:
                with v3.VContainer(classes="pa-2"):
                    v3.VAlert(text=("error",), v_if=("error",), type="error", density="compact", id="error",
                              classes="mb-2", closable=True, click_close="error = ''")
                    v3.VTextField(v_model=("server_url",), label="Server URL", density="compact", id="server-url")
                    v3.VBtn("Connect", click=(self.connect, "[server_url]"), id="connect", block=True, disabled=("busy",))
                    v3.VSelect(v_model=("model",), items=("models",), label="Model", density="compact",
                               id="model", classes="mt-2", disabled=("!connected",))
                    html.Div("{{ model_card }}", id="model-card", classes="text-caption mb-2")
                    v3.VFileInput(v_model=("upload",), label="Image file (film or volume)", density="compact",
                                  id="upload", show_size=True)
                    html.Div("{{ limits }}", classes="text-caption")
                    v3.VSelect(v_model=("strategy",), items=("strategies",), label="Next image by",
                               density="compact", classes="mt-2", disabled=("!connected",))
                    v3.VBtn("Next image", click=self.next_image, id="next-image", block=True,
                            disabled=("busy || !connected",))
                    v3.VBtn("Compute anomaly map", click=self.compute, id="compute", block=True, color="primary",
                            classes="mt-2", disabled=("busy || !connected || !has_image",))
                    html.Div("{{ score }}", id="score", classes="text-body-2 my-1")
                    with html.Div(id="threshold"):
                        v3.VSlider(v_model_number=("threshold",), min=("threshold_min",), max=("threshold_max",),
                                   step=("threshold_step",), label="Threshold", hide_details=True,
                                   disabled=("!has_result",))
                    html.Div("{{ threshold_text }}", id="threshold-text", classes="text-caption")
                    with html.Div(id="opacity"):
                        v3.VSlider(v_model_number=("opacity",), min=0, max=1, step=0.05, label="Opacity",
                                   hide_details=True)
                    v3.VSelect(v_model=("colour_map",), items=("colour_maps",), label="Colours", density="compact")
                    with v3.VBtnToggle(v_model=("tool",), mandatory=True, density="compact", id="tool",
                                       disabled=("!has_result",)):
                        v3.VBtn("View", value="none", id="tool-none")
                        v3.VBtn("Paint", value="paint", id="tool-paint")
                        v3.VBtn("Erase", value="erase", id="tool-erase")
                    v3.VSlider(v_model_number=("brush_mm",), min=1, max=60, step=1, label="Brush mm",
                               hide_details=True)
                    v3.VBtn("Submit correction", click=self.submit, id="submit", block=True,
                            disabled=("busy || !has_result",))
                    with v3.VRow(dense=True, classes="mt-2"):
                        v3.VTextField(v_model_number=("epochs",), label="Epochs", type="number", density="compact",
                                      id="epochs")
                        v3.VTextField(v_model_number=("minutes",), label="Minutes", type="number",
                                      density="compact", id="minutes")
                    v3.VBtn("Retrain", click=(self.retrain, "[epochs, minutes]"), id="retrain", block=True,
                            disabled=("busy || !connected",))
                    v3.VProgressLinear(model_value=("progress",), indeterminate=("busy && !progress_known",),
                                       active=("busy",), id="progress", classes="my-1")
                    v3.VBtn("Cancel", click=self.cancel, block=True, disabled=("!busy",), id="cancel")
            with layout.content:
                with html.Div(style="position: relative; width: 100%; height: calc(100vh - 64px);", id="views"):
                    self.layout_manager.initialize_layout_grid(layout)
        self.layout = layout

    def start(self, port: int = 8080, **kwargs) -> None:
        self.server.start(port=port, host="127.0.0.1", open_browser=False, **kwargs)


def model_card(model: ModelInfo) -> str:
    """The model's card for the page: the summary line, its thresholds and version."""
    text = model.summary()
    thresholds = ", ".join(f"{key} {value:.4g}" for key, value in model.thresholds.items()
                           if isinstance(value, (int, float)))
    if thresholds:
        text += f". Thresholds: {thresholds}"
    if model.card.get("summary"):
        text += f". Card: {model.card['summary']}"
    failure_modes = model.card.get("failure_modes") or []
    if failure_modes:
        text += f". Known weakness: {failure_modes[0]}"
    if model.source:
        text += f". Checkpoint: {model.source}"
    if model.model_version:
        text += f". Version {model.model_version}"
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m MedAnomalyLib.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-url", default=os.environ.get("MEDANOMALY_SERVER_URL", DEFAULT_SERVER_URL))
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    WebViewer(server_url=args.server_url).start(port=args.port)


if __name__ == "__main__":
    main()
