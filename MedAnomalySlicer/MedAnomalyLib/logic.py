"""The clinician workflow without Slicer: connect, compute an anomaly map, re-threshold locally, submit a
corrected label, retrain, fetch the next sample.

Long calls return a `Job` (worker thread). The widget calls `poll()` from a QTimer; `poll()` runs in the UI
thread and emits the signals, so connected Qt slots never run in the worker thread.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .client import ModelInfo, MonaiLabelClient, make_image_id
from .errors import MedAnomalyError, ServerError, VolumeFormatError
from .heatmap import ThresholdScale, anomalous_fraction, threshold_mask
from .jobs import Job, JobContext, JobState
from .signals import Signal
from .volume import Volume, read_volume, write_volume

# Training log lines name the epoch ("epoch 3/10", "epoch 3 of 10" or "epoch 3: loss ...").
_EPOCH = re.compile(r"epoch\D{0,3}(\d+)(?:\s*(?:/|of)\s*(\d+))?", re.IGNORECASE)
_STEP = re.compile(r"epoch (\d+)/(\d+) step (\d+)/(\d+)")  # the server's per-step progress line


@dataclass
class AnomalyMapResult:
    """One inference, downloaded: the float heatmap and the labelmap on the input's grid, plus the score JSON."""

    image_id: str
    model: str
    heatmap: Volume
    label: Volume
    details: dict
    extra_maps: dict = field(default_factory=dict)  # name -> Volume (e.g. aleatoric uncertainty)

    @property
    def score(self) -> float | None:
        return self.details.get("score")

    @property
    def pixel_threshold(self) -> float | None:
        return self.details.get("pixel_threshold")

    @property
    def image_threshold(self) -> float | None:
        return self.details.get("image_threshold")

    @property
    def is_anomalous(self) -> bool | None:
        return self.details.get("is_anomalous")

    def summary(self) -> str:
        """The score line for the panel."""
        score = self.score
        text = f"Score {score:.4g}" if isinstance(score, (int, float)) else "Score n/a"
        if isinstance(self.image_threshold, (int, float)):
            verdict = "anomalous" if self.is_anomalous else "within normal range"
            text += f" (image threshold {self.image_threshold:.4g}: {verdict})"
        check = self.details.get("modality_check") or {}
        if check.get("status") == "mismatch":
            text += f". Warning: {check.get('message', 'modality mismatch')}"
        return text


@dataclass
class NextSample:
    image_id: str
    path: Path
    details: dict


class AnomalyWorkflow:
    """Holds the connection and the current result; long operations run as jobs, one at a time."""

    def __init__(self, work_dir=None):
        self.client: MonaiLabelClient | None = None
        self.models: list[ModelInfo] = []
        self.strategies: list[str] = []
        self.result: AnomalyMapResult | None = None
        self.threshold: float | None = None
        self.scale: ThresholdScale | None = None
        self.mask: np.ndarray | None = None
        self.job: Job | None = None
        self._on_done = None
        self._work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="medanomaly-slicer-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        # Signals (plain Python): the widget connects Qt updates to them.
        self.models_changed = Signal("models")
        self.result_ready = Signal("result")
        self.mask_changed = Signal("mask", "threshold")
        self.correction_submitted = Signal("answer")
        self.training_finished = Signal("status")
        self.sample_ready = Signal("sample")
        self.progress = Signal("fraction", "message")
        self.error_occurred = Signal("message")
        self.busy_changed = Signal("busy")

    # --- job plumbing -------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A job runs, or has ended without `poll()` having delivered its outcome yet (a second job started then
        would drop that outcome)."""
        return self.job is not None

    def _start(self, name: str, work, on_done) -> Job:
        if self.busy:
            raise MedAnomalyError(f"'{self.job.name}' is still running: wait for it or cancel it first")
        self.job = Job(name, work)
        self._on_done = on_done
        self.busy_changed.emit(True)
        return self.job.start()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def poll(self) -> JobState | None:
        """Call from the UI thread (QTimer): emits progress, then the job's outcome once it ends."""
        job = self.job
        if job is None:
            return None
        state = job.state()
        self.progress.emit(state.fraction, state.message)
        if state.done:
            on_done, self.job, self._on_done = self._on_done, None, None
            if state.error:
                self.error_occurred.emit(state.error)
            elif not state.cancelled and on_done is not None:
                try:
                    on_done(state.result)
                except MedAnomalyError as error:
                    self.error_occurred.emit(str(error))
            self.busy_changed.emit(False)
        return state

    def wait(self, timeout: float = 600.0, interval: float = 0.2) -> JobState | None:
        """Poll until the current job ends (scripts and tests; the widget uses a QTimer instead)."""
        deadline = time.monotonic() + timeout
        state = self.poll()
        while state is not None and not state.done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{state.name} did not finish within {timeout} s")
            time.sleep(interval)
            state = self.poll()
        return state

    def _require_client(self) -> MonaiLabelClient:
        if self.client is None:
            raise MedAnomalyError("connect to a server first")
        return self.client

    # --- 1) connect ---------------------------------------------------------------------------------------------
    def connect(self, server_url: str) -> Job:
        client = MonaiLabelClient(server_url)

        def work(context: JobContext):
            context.report(0.1, f"Connecting to {client.server_url}")
            info = client.info()
            models = [ModelInfo.from_info(name, entry or {}) for name, entry in (info.get("models") or {}).items()]
            return models, list((info.get("strategies") or {}).keys())

        def done(answer):
            self.client = client
            self.models, self.strategies = answer
            self.models_changed.emit(self.models)

        return self._start("Connect", work, done)

    def model(self, name: str) -> ModelInfo:
        for model in self.models:
            if model.name == name:
                return model
        raise MedAnomalyError(f"the server has no model '{name}'; choose one of {[m.name for m in self.models]}")

    # --- 2) compute the anomaly map -----------------------------------------------------------------------------
    def compute(self, volume: Volume | None, model: str, options: dict | None = None, image_id: str | None = None,
                name: str = "image") -> Job:
        """Upload `volume` (unless `image_id` already names it in the datastore), infer, download label,
        heatmap and score. A film is a single-slice volume."""
        client = self._require_client()
        if volume is None and image_id is None:
            raise MedAnomalyError("select an image first")
        params = {"label_format": "nrrd", **(options or {})}

        def work(context: JobContext):
            target = image_id
            folder = Path(tempfile.mkdtemp(dir=self._work_dir, prefix="infer-"))
            try:
                if target is None:
                    context.report(0.05, "Uploading the image")
                    upload = write_volume(volume, folder / "image.nrrd")
                    target = client.upload_image(upload, make_image_id(name))
                context.report(0.2, f"Computing the anomaly map with {model}")
                details, label_bytes, label_name = client.infer(model, target, params)
                context.report(0.7, "Downloading the maps")
                return self._download_result(client, model, target, details, label_bytes, label_name, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return self._start("Compute anomaly map", work, self._set_result)

    def _download_result(self, client, model, image_id, details, label_bytes, label_name, folder):
        if label_bytes is None:
            raise ServerError("the server returned no labelmap for this inference")
        label_path = folder / Path(label_name).name
        label_path.write_bytes(label_bytes)
        label = read_volume(label_path)
        maps = dict(details.get("maps") or {})
        heat_url = (details.get("heatmap") or {}).get("url") or maps.pop("anomaly", None)
        maps.pop("anomaly", None)
        if not heat_url:
            raise ServerError("the inference result names no heatmap")
        heatmap = read_volume(client.download_map(heat_url, folder / "anomaly.nrrd"))
        extras = {name: read_volume(client.download_map(url, folder / f"{name}.nrrd")) for name, url in maps.items()
                  if re.fullmatch(r"[A-Za-z0-9_.-]+", name)}
        if not heatmap.same_grid(label):
            raise VolumeFormatError(f"the heatmap grid {heatmap.shape} does not match the labelmap {label.shape}")
        return AnomalyMapResult(image_id, model, heatmap.with_array(heatmap.array.astype(np.float32)), label,
                                details, extras)

    def _set_result(self, result: AnomalyMapResult) -> None:
        self.result = result
        threshold = result.pixel_threshold
        self.scale = ThresholdScale.for_heatmap(result.heatmap.array, threshold)
        if not isinstance(threshold, (int, float)):  # uncalibrated model: start from the labelmap the server sent
            threshold = self.scale.threshold(self.scale.steps // 2)
        self.result_ready.emit(result)
        self.set_threshold(float(threshold))

    # --- 4) local re-threshold (never calls the server) --------------------------------------------------------
    def set_threshold(self, threshold: float) -> np.ndarray:
        if self.result is None:
            raise MedAnomalyError("compute an anomaly map first")
        self.threshold = float(threshold)
        self.mask = threshold_mask(self.result.heatmap.array, self.threshold)
        self.mask_changed.emit(self.mask, self.threshold)
        return self.mask

    def threshold_summary(self) -> str:
        if self.threshold is None or self.mask is None:
            return "Threshold n/a"
        return f"Threshold {self.threshold:.4g}: {100 * anomalous_fraction(self.mask):.2f} % of pixels flagged"

    # --- 5) submit the corrected label --------------------------------------------------------------------------
    def submit_correction(self, mask: np.ndarray, tag: str = "final") -> Job:
        """Send the annotator's edited mask (on the result's grid) as the image's label."""
        client = self._require_client()
        if self.result is None:
            raise MedAnomalyError("compute an anomaly map first: the correction is saved for that image")
        result = self.result
        label = result.heatmap.with_array((np.asarray(mask) > 0).astype(np.uint8))

        def work(context: JobContext):
            context.report(0.1, "Submitting the corrected label")
            folder = Path(tempfile.mkdtemp(dir=self._work_dir, prefix="label-"))
            try:
                path = write_volume(label, folder / f"{result.image_id}.nrrd")
                return client.save_label(result.image_id, path, tag=tag,
                                         params={"model": result.model, "threshold": self.threshold})
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return self._start("Submit correction", work, self.correction_submitted.emit)

    # --- 6) retrain ---------------------------------------------------------------------------------------------
    def retrain(self, model: str, params: dict | None = None, poll_seconds: float = 1.0) -> Job:
        """Start training on the server and follow it to the end; Cancel stops the server's training."""
        client = self._require_client()
        params = dict(params or {})
        minutes = params.get("minutes")

        def work(context: JobContext):
            context.report(0.0, f"Starting training of {model}")
            started = client.train_start(model, params)
            task_id = (started or {}).get("id")
            begun = time.monotonic()
            try:
                while True:
                    context.sleep(poll_seconds)
                    status = client.train_status() or {}
                    if task_id and status.get("id") not in (None, task_id):
                        continue  # an older task's status: ours is queued
                    state = str(status.get("status", "")).upper()
                    fraction = _training_fraction(status, begun, minutes, params.get("epochs"))
                    context.report(fraction, f"Training {model}: {state.lower() or 'waiting'}"
                                             f"{_last_line(status)}")
                    if state in ("DONE", "ERROR", "STOPPED"):
                        break
            except BaseException:
                _quietly(client.train_stop)  # cancelled or failed while following: do not leave it running
                raise
            if state != "DONE":
                raise ServerError(f"training of {model} ended with {state}{_last_line(status)}")
            return {"status": status, "stats": (client.info().get("train_stats") or {}).get(model, {})}

        def done(answer):
            self.training_finished.emit(answer)

        return self._start("Retrain", work, done)

    # --- 7) next image by active learning -----------------------------------------------------------------------
    def next_sample(self, strategy: str, model: str | None = None) -> Job:
        client = self._require_client()

        def work(context: JobContext):
            context.report(0.1, f"Asking the server for the next image ({strategy})")
            answer = client.next_sample(strategy, {"model": model} if model else {})
            image_id = (answer or {}).get("id")
            if not image_id:
                raise ServerError("no image left to review: every image already has a final label")
            context.report(0.5, f"Downloading {image_id}")
            folder = Path(tempfile.mkdtemp(dir=self._work_dir, prefix="sample-"))
            return NextSample(image_id, client.download_image(image_id, folder), answer)

        return self._start("Next image", work, self.sample_ready.emit)

    def cleanup(self) -> None:
        self.cancel()
        shutil.rmtree(self._work_dir, ignore_errors=True)


def _training_fraction(status: dict, begun: float, minutes, epochs) -> float | None:
    """Progress from the log's last step line (epoch e/E step s/S), else its last epoch line, else the time limit;
    None when nothing tells."""
    log = " ".join(str(line) for line in (status.get("details") or [])[-20:])
    steps = _STEP.findall(log)
    if steps:
        epoch, total, step, per_epoch = (int(value) for value in steps[-1])
        if total > 0 and per_epoch > 0:
            return min((epoch - 1 + step / per_epoch) / total, 0.99)
    matches = _EPOCH.findall(log)
    if matches:
        current, total = matches[-1]
        total = int(total) if total else int(epochs or 0)
        if total > 0:
            return min(int(current) / total, 0.99)
    if minutes:
        return min((time.monotonic() - begun) / (60.0 * float(minutes)), 0.99)
    return None


def _last_line(status: dict) -> str:
    details = status.get("details") or []
    return f" - {str(details[-1])[-160:]}" if details else ""


def _quietly(call) -> None:
    try:
        call()
    except MedAnomalyError:
        pass
