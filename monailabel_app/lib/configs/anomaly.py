"""One generic config per registered anomaly model: where its checkpoint lives, which images it expects, and
what the server tells clients about it. Built from `medanomaly.list_models()` at start, so a model added to the
registry is served without any change here."""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import medanomaly

from .modalities import expected_for

PUBLISHED = "model.pt"  # the checkpoint the server serves
IN_TRAINING = "training.pt"  # the checkpoint a running (or interrupted) training writes every epoch
RECORD = "version.json"  # what the last published training was: version, date, figures


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, default=str)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class AnomalyModelConfig:
    """A registered model as the server sees it: checkpoint paths, the loaded model (reloaded when a training
    publishes a new checkpoint), expected modalities and its description."""

    def __init__(self, name: str, model_dir: Path, conf: dict):
        self.name = name
        self.cls = medanomaly.model_class(name)
        self.folder = Path(model_dir) / name
        self.modalities, self.body_parts = expected_for(name, self.cls, conf)
        self._lock = threading.RLock()  # one prediction at a time per model: options are set on the model
        self._loaded = None
        self._loaded_stamp = None

    @property
    def checkpoint(self) -> Path:
        return self.folder / PUBLISHED

    @property
    def training_checkpoint(self) -> Path:
        return self.folder / IN_TRAINING

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD

    def record(self) -> dict:
        return read_json(self.record_path)

    def is_trained(self) -> bool:
        return self.checkpoint.is_file()

    def takes_films(self) -> bool | None:
        """True for film models, False for volume (MR) models, None when the model did not say."""
        from .modalities import FILM_MODALITIES, VOLUME_MODALITIES

        if not self.modalities:
            return None
        if set(self.modalities) <= set(VOLUME_MODALITIES):
            return False
        if set(self.modalities) <= set(FILM_MODALITIES):
            return True
        return None

    def accepts(self, image) -> bool:
        """Whether a datastore image is for this model: its DICOM modality (when known) and its kind, a film (2D
        or one slice) or a volume, must fit. Keeps brain volumes out of a film model's training and back."""
        modality = (image.meta.get("modality") or "").upper()
        if modality and self.modalities and modality not in self.modalities:
            return False
        films = self.takes_films()
        is_film = image.array.ndim == 2 or image.array.shape[0] == 1
        return films is None or films == is_film

    # ----- serving -----
    def lock(self):
        return self._lock

    def model(self):
        """The published model, loaded once and again whenever a new checkpoint is published; None if none."""
        try:
            stat = self.checkpoint.stat()
        except FileNotFoundError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if self._loaded is None or stamp != self._loaded_stamp:
                self._loaded = medanomaly.load(self.checkpoint)
                self._loaded_stamp = stamp
            return self._loaded

    # ----- training -----
    def publish(self, trained_checkpoint: Path, record: dict) -> None:
        """Make a finished training the served model in one atomic rename, then record its version."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.replace(trained_checkpoint, self.checkpoint)
        write_json_atomic(self.record_path, {**record, "published_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    # ----- description -----
    def describe(self) -> dict:
        description = self.cls.describe()
        record = self.record()
        model = None
        if self.is_trained():
            try:
                model = self.model()
            except Exception as error:  # a corrupt checkpoint is reported, not fatal for /info/
                description["checkpoint_error"] = str(error)
        return {
            "kind": description["kind"],
            "supervised": description["supervised"],
            "code_version": description["version"],
            "inference_options": description["inference_options"],
            "default_config": description["default_config"],
            "modalities": list(self.modalities) if self.modalities else None,
            "body_parts": list(self.body_parts) if self.body_parts else None,
            "trained": model is not None,
            "model_version": model.model_version if model is not None else None,
            "thresholds": dict(model.thresholds) if model is not None else None,
            "calibration": model.calibration if model is not None else None,
            "published_at": record.get("published_at"),
            **({"checkpoint_error": description["checkpoint_error"]} if "checkpoint_error" in description else {}),
        }


def model_configs(model_dir: Path, conf: dict) -> dict[str, AnomalyModelConfig]:
    """Every registered model, optionally narrowed by the `models` conf option (comma-separated names)."""
    names = medanomaly.list_models()
    wanted = conf.get("models", "all").strip()
    if wanted and wanted != "all":
        chosen = [name.strip() for name in wanted.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise ValueError(f"conf models: unknown {unknown}; registered: {names}")
        names = chosen
    return {name: AnomalyModelConfig(name, model_dir, conf) for name in names}
