"""One infer task for every registered model: `medanomaly.load(checkpoint).predict(image, threshold, **options)`.

Built on MONAI Label's light `InferTask` interface, not `BasicInferTask`: the latter wraps a bare network in
MONAI pre/post transforms and an inferer, while a medanomaly model already owns its preprocessing, its slice by
slice scoring of films and volumes, its thresholds and calibration. Wrapping it in transforms would copy that
logic per model; the contract's `predict` is the single entry point instead."""
from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask

from medanomaly.errors import ModalityMismatchError, UnsupportedImageError
from medanomaly.io import write_image

from ..inputs import check_image_size, infer_options, load_image, modality_check, unprocessable
from ..results import ResultStore

if TYPE_CHECKING:
    from ..configs import AnomalyTaskConfig


def json_safe(value):
    """Numbers, lists and dicts only, NaN/Inf as null: the result must survive json.dumps in the endpoint (one
    pass over the result, which is then sent as it is)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist()) if value.size <= 4096 else f"<array {list(value.shape)}>"
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


class AnomalyInferTask(InferTask):
    def __init__(self, config: "AnomalyTaskConfig", results: ResultStore, label_dir: Path, modality_mode: str):
        description = config.cls.describe()
        super().__init__(
            type="anomaly",
            labels={"anomaly": 1},
            dimension=2,
            description=description["description"] or config.name,
            config={"threshold": None, **{key: description["default_config"].get(key)
                                          for key in description["inference_options"]}},
        )
        self.model_config = config
        self.results = results
        self.label_dir = Path(label_dir)
        self.modality_mode = modality_mode

    def info(self):
        return {**super().info(), "medanomaly": self.model_config.describe()}

    def get_path(self, validate=True):
        """The published checkpoint, for MONAI Label's /model/ routes (download, checksum, delete)."""
        path = self.model_config.checkpoint
        return str(path) if path.is_file() or not validate else None

    def is_valid(self) -> bool:
        return True  # listed even before training: infer then answers 409 with what to do

    def __call__(self, request):
        started = time.perf_counter()
        name = self.model_config.name
        threshold, options, label_suffix = infer_options(request, self.model_config.cls)
        model = self.model_config.model()
        if model is None:
            raise HTTPException(status_code=409, detail=f"model {name} is not trained yet; POST /train/{name}")

        image = load_image(request["image"])
        check_image_size(image, self.model_config.metadata.min_image_size, name)
        read_seconds = time.perf_counter() - started
        screen = modality_check(image, self.model_config.modalities, self.model_config.body_parts, self.modality_mode)
        if screen["status"] == "mismatch" and self.modality_mode == "refuse":
            raise unprocessable(f"model {name} does not take this image: {screen['message']} "
                                f"(conf modality_check=flag serves it with a warning)")

        with self.model_config.lock():
            try:
                result = model.predict(image, threshold=threshold, **options)
            except (UnsupportedImageError, ModalityMismatchError) as error:
                raise unprocessable(f"cannot use this image: {error}") from None
            except ValueError as error:  # an option value the model refuses
                raise HTTPException(status_code=400, detail=f"{name}: {error}") from None

        written = time.perf_counter()
        self.label_dir.mkdir(parents=True, exist_ok=True)
        # a fresh name, written atomically by medanomaly.io; MONAI Label's response removes it once sent
        label_file = str(write_image(image, self.label_dir / f"label-{uuid.uuid4().hex}{label_suffix}",
                                     result.mask.astype(np.uint8)))
        result_id, urls = self.results.save(image, {"anomaly": result.map, **result.extras})
        write_seconds = time.perf_counter() - written

        meta = dict(result.meta)
        timings = {**meta.pop("timings", {}), "read_seconds": read_seconds, "write_seconds": write_seconds,
                   "total_seconds": time.perf_counter() - started}
        body = {
            **meta,
            "model": name,
            "score": result.score,
            "class_probabilities": meta.get("class_probabilities"),
            "shape": list(image.shape),
            "spacing": list(image.spacing),
            "modality": screen["modality"],
            "modality_check": screen,
            "result_id": result_id,
            "heatmap": {"url": urls["anomaly"], "format": "nrrd", "dtype": "float32"},
            "maps": urls,
            "timings": timings,
            "label_names": {"anomaly": 1},
            # what predict ran with (the model's meta reports its configured values after the call)
            "options": {**(meta.get("options") or {}), **options},
        }
        return label_file, json_safe(body)
