"""One train task for every registered model: `medanomaly.create(name).fit(train, val, checkpoint=...)` on the
datastore, then an atomic publish of the new checkpoint.

Built on MONAI Label's light `TrainTask` interface, not `BasicTrainTask`: the latter drives an ignite
SupervisedTrainer over MONAI transforms, while `AnomalyModel.fit` already trains (with resume and per-epoch
checkpoints) and calibrates every method the same way.

What the datastore means for training:
- an image without a `final` label is normal;
- an image whose `final` label holds a lesion (any non-zero voxel) is abnormal: unsupervised models keep it out
  of training (the contract's `select_training_items`) and it calibrates the thresholds (Youden, image and pixel
  level) beside held-out normals; an all-zero final label marks a reviewed normal;
- an image whose datastore info says `"abnormal": true` (PUT /datastore/image/info) is abnormal without a mask:
  out of unsupervised training, and it calibrates the image-level threshold;
- classifiers learn the class from the label's or the image's info `class` (e.g. "Effusion"), else 0/1.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import medanomaly
import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from medanomaly.errors import ManifestError

from ..configs import AnomalyTaskConfig
from ..configs.anomaly import read_json, write_json_atomic
from ..inputs import load_image
from .multi_gpu import GPU_REQUEST_KEYS, processes_for, train_with_torchrun

logger = logging.getLogger(__name__)

# Keys MONAI Label adds to a train request; everything else is model config (or `minutes`).
REQUEST_KEYS = {"model", "local_rank", "bundle_path", "client_id", "enqueue", "run_sync"} | GPU_REQUEST_KEYS
HOLD_OUT_EVERY = 5  # with abnormal images present, every 5th normal is kept for calibration
PROGRESS_EVERY_SECONDS = 5.0


def datastore_items(datastore: Datastore, accepts=None) -> list:
    """Every readable datastore image (that `accepts(image)`, when given) as a training item with .image, .mask,
    .roi, .label, .is_abnormal and .id."""
    items = []
    for image_id in sorted(datastore.list_images()):
        try:
            image = load_image(datastore.get_image_uri(image_id))
        except Exception as error:  # an unreadable file in the studies folder must not stop training
            logger.warning(f"skipping image {image_id}: {getattr(error, 'detail', error)}")
            continue
        if accepts is not None and not accepts(image):
            continue
        mask, label_info = None, {}
        labels = datastore.get_labels_by_image_id(image_id) or {}
        if DefaultLabelTag.FINAL.value in labels:
            try:
                label = load_image(datastore.get_label_uri(image_id, DefaultLabelTag.FINAL.value))
                mask = (label.array.reshape(image.array.shape) > 0).astype(np.uint8)
                label_info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL.value) or {}
            except Exception as error:
                logger.warning(f"skipping the final label of {image_id}: {getattr(error, 'detail', error)}")
        image_info = datastore.get_image_info(image_id) or {}
        # abnormal: a lesion in the final label, or an image-level label in the image info (no mask then)
        abnormal = bool(mask is not None and mask.any()) or image_info.get("abnormal") is True
        label = label_info.get("class") or image_info.get("class") or (1 if abnormal else 0)
        mask = mask if mask is not None and mask.any() else None
        items.append(SimpleNamespace(id=image_id, image=image, mask=mask, roi=None,
                                     label=label, is_abnormal=abnormal))
    return items


def split(items: list, supervised: bool) -> tuple[list, list | None]:
    """(train, val): normals train, abnormals (with some held-out normals) calibrate."""
    normals = [item for item in items if not item.is_abnormal]
    abnormals = [item for item in items if item.is_abnormal]
    if not abnormals:
        return items, None  # calibration on the training normals (percentile)
    if len(normals) >= HOLD_OUT_EVERY:
        held_out = normals[::HOLD_OUT_EVERY]
        kept = [item for item in normals if item not in held_out]
    else:
        held_out, kept = normals, normals
    train = kept + (abnormals if supervised else [])
    return train, held_out + abnormals


class AnomalyTrainTask(TrainTask):
    def __init__(self, config: AnomalyTaskConfig, defaults: dict | None = None):
        super().__init__(f"Train {config.name} on the datastore (normals; lesion labels calibrate)")
        self.model_config = config
        self.defaults = dict(defaults or {})  # e.g. a shorter default run for a demo server

    def config(self):
        described = self.model_config.cls.describe()["default_config"]
        return {"epochs": described.get("epochs"), "minutes": None, "multi_gpu": True, "gpus": "all", **self.defaults}

    def stats(self):
        return read_json(self.model_config.folder / "train_stats.json")

    def __call__(self, request, datastore: Datastore):
        name = self.model_config.name
        settings = {**self.defaults, **{k: v for k, v in request.items() if k not in REQUEST_KEYS}}
        minutes = settings.pop("minutes", None)
        started = time.time()
        items = datastore_items(datastore, self.model_config.accepts)
        if not items:
            raise ValueError(f"{name}: no datastore image fits this model (expects {self.model_config.modalities})")
        supervised = self.model_config.cls.supervised
        train, val = split(items, supervised)
        model = medanomaly.create(name)
        if supervised:
            train = [item for item in train if _has_class(model, item)]
        normals = sum(not item.is_abnormal for item in items)
        abnormals = len(items) - normals
        print(f"[{name}] training on {len(train)} image(s): {normals} normal, {abnormals} abnormal (lesion label or "
              f"image-level); calibration on {len(val) if val else 'the training normals'}", flush=True)

        folder = self.model_config.folder
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = self.model_config.training_checkpoint
        stats_path = folder / "train_stats.json"
        base_stats = {"model": name, "status": "RUNNING", "started": started, "images": len(items),
                      "normals": normals, "abnormals": abnormals, "train_images": len(train)}
        write_json_atomic(stats_path, base_stats)

        def on_epoch_end(record):
            print(f"[{name}] epoch {record['epoch']}: loss {record['loss']:.5f} ({record['seconds']:.1f} s)",
                  flush=True)
            write_json_atomic(stats_path, {**base_stats, "epoch": record["epoch"], "loss": record["loss"],
                                           "total_time": time.time() - started})

        last_progress = [0.0, {}]

        def on_progress(progress):
            # Steps done, time left in the budget and the epoch's estimated length, for /info/ and Slicer; written
            # at most every few seconds so that a fast model does not spend its steps on status files.
            now = time.time()
            if now - last_progress[0] < PROGRESS_EVERY_SECONDS and progress.step != progress.steps_per_epoch:
                return
            last_progress[0] = now
            last_progress[1] = {**progress.as_dict(), "line": progress.line()}
            print(f"[{name}] {progress.line()}", flush=True)  # the train log Slicer follows
            write_json_atomic(stats_path, {**base_stats, "epoch": progress.epoch, "loss": progress.loss,
                                           "progress": last_progress[1], "total_time": now - started})

        processes = processes_for(request)
        try:
            if processes > 1:  # one process per GPU: the command line's DDP path under torchrun
                train_with_torchrun(name, processes, train, val, datastore, checkpoint, settings, minutes)
                model = medanomaly.load(checkpoint)
                history = model.train_state["history"]
            else:
                history = model.fit(train, val, checkpoint=checkpoint, minutes=minutes, progress=False,
                                    on_epoch_end=on_epoch_end, on_progress=on_progress, **settings)
        except Exception as error:
            write_json_atomic(stats_path, {**base_stats, "status": "ERROR", "error": str(error)})
            raise
        record = {"model_version": model.model_version, "epochs": len(history),
                  "loss": history[-1]["loss"] if history else None, "history": history,
                  "thresholds": model.thresholds, "calibration": model.calibration,
                  "normals": normals, "abnormals": abnormals, "train_images": len(train),
                  "total_time": time.time() - started, "config": settings, "minutes": minutes}
        self.model_config.publish(checkpoint, record)
        write_json_atomic(stats_path, {**record, **base_stats, "status": "DONE", "progress": last_progress[1],
                                       "published_at": self.model_config.record().get("published_at")})
        print(f"[{name}] published {model.model_version}", flush=True)
        return {"model": name, "model_version": model.model_version, "epochs": len(history)}


def _has_class(model, item) -> bool:
    try:
        return model.class_index(item.label) is not None
    except ManifestError as error:
        logger.warning(f"left out of classifier training: {error}")
        return False
