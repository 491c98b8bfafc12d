"""One MONAI Label `TaskConfig` per registered anomaly model: where its checkpoint lives, which images it takes,
its infer and train tasks, and what the server tells clients about it. Built from `medanomaly.list_models()` at
start, so a model added to the registry is served without any change here."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import medanomaly
from medanomaly.atomic import atomic_destination
from medanomaly.zoo import read_card
from monailabel.interfaces.config import TaskConfig

from .modalities import model_metadata

PUBLISHED = "model.pt"  # the checkpoint a training on this server published; served before the shipped one
IN_TRAINING = "training.pt"  # the checkpoint a running (or interrupted) training writes every epoch
RECORD = "version.json"  # what the last published training was: version, date, figures
ZOO = Path(__file__).resolve().parents[2] / "zoo"  # shipped checkpoints NAME.pt and their cards (read-only here)


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_destination(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class AnomalyTaskConfig(TaskConfig):
    """A registered model as the server sees it: checkpoint paths, the loaded model (reloaded when a training
    publishes a new checkpoint), its declared metadata, and its infer and train tasks."""

    def init(self, name: str, model_dir: str, conf: dict, planner=None, **kwargs):
        """kwargs: results (ResultStore), label_dir, modality_mode and train_defaults, for the tasks."""
        super().init(name, model_dir, conf, planner, **kwargs)
        self.cls = medanomaly.model_class(name)
        self.folder = Path(model_dir) / name
        # conf zoo_dir, else $MEDANOMALY_ZOO_DIR, else the app's zoo/; an empty value serves no shipped model
        zoo = conf.get("zoo_dir", os.environ.get("MEDANOMALY_ZOO_DIR", str(ZOO)))
        self.zoo = Path(zoo) if zoo else None
        self.card = read_card(self.zoo, name) if self.zoo else None
        self.metadata = model_metadata(name, self.cls, conf)
        self._lock = threading.RLock()  # one prediction at a time per model: options are set on the model
        self._loaded = None
        self._loaded_stamp = None

    def infer(self):
        from ..infers import AnomalyInferTask

        return AnomalyInferTask(self, self.kwargs["results"], self.kwargs["label_dir"], self.kwargs["modality_mode"])

    def trainer(self):
        from ..trainers import AnomalyTrainTask

        return AnomalyTrainTask(self, self.kwargs.get("train_defaults"))

    @property
    def modalities(self):
        return self.metadata.modalities

    @property
    def body_parts(self):
        return self.metadata.body_parts

    @property
    def published(self) -> Path:
        return self.folder / PUBLISHED

    @property
    def shipped(self) -> Path | None:
        return self.zoo / f"{self.name}.pt" if self.zoo else None

    @property
    def checkpoint(self) -> Path:
        """What is served: a checkpoint trained here (POST /train) takes precedence over the shipped one."""
        if self.published.is_file() or self.shipped is None or not self.shipped.is_file():
            return self.published
        return self.shipped

    def source(self) -> str | None:
        path = self.checkpoint  # looked up once: it checks the model folder and the zoo on disk
        return None if not path.is_file() else "shipped" if path == self.shipped else "trained"

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

    def accepts(self, image) -> bool:
        """Whether a datastore image is for this model: its DICOM modality (when known) and its kind, a film (2D
        or one slice) or a volume, must fit. Keeps brain volumes out of a film model's training and back."""
        modality = (image.meta.get("modality") or "").upper()
        if modality and self.modalities and modality not in self.modalities:
            return False
        films = self.metadata.takes_films()
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
        os.replace(trained_checkpoint, self.published)  # the shipped file is never overwritten
        write_json_atomic(self.record_path, {**record, "published_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    # ----- description -----
    def describe(self) -> dict:
        description = self.cls.describe()
        record = self.record()
        model, error = None, None
        if self.is_trained():
            try:
                model = self.model()
            except Exception as failure:  # a corrupt checkpoint is reported, not fatal for /info/
                error = str(failure)
        return {
            "kind": description["kind"],
            "supervised": description["supervised"],
            "code_version": description["version"],
            "inference_options": description["inference_options"],
            "default_config": description["default_config"],
            "modalities": list(self.modalities) if self.modalities else None,
            "body_parts": list(self.body_parts) if self.body_parts else None,
            "uncertainty_map": self.metadata.uncertainty_map,
            "min_image_size": self.metadata.min_image_size,
            "trained": model is not None,
            "model_version": model.model_version if model is not None else None,
            "thresholds": dict(model.thresholds) if model is not None else None,
            "calibration": model.calibration if model is not None else None,
            "published_at": record.get("published_at"),
            "source": self.source(),  # "trained" here (POST /train), "shipped" (the zoo folder), or None
            # the shipped model's card, without its regression subset (that is for tests)
            "card": {k: v for k, v in self.card.items() if k != "regression_subset"} if self.card else None,
            **({"checkpoint_error": error} if error else {}),
        }


def model_configs(model_dir: Path, conf: dict, **task_kwargs) -> dict[str, AnomalyTaskConfig]:
    """Every registered model, optionally narrowed by the `models` conf option (comma-separated names), each
    initialised as MONAI Label initialises a TaskConfig (`task_kwargs` reach its infer and train tasks)."""
    names = medanomaly.list_models()
    wanted = conf.get("models", "all").strip()
    if wanted and wanted != "all":
        chosen = [name.strip() for name in wanted.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise ValueError(f"conf models: unknown {unknown}; registered: {names}")
        names = chosen
    configs = {}
    for name in names:
        configs[name] = AnomalyTaskConfig()
        configs[name].init(name, str(model_dir), conf, None, **task_kwargs)
    return configs
