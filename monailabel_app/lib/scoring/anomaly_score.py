"""Scores every datastore image with a model and keeps them in the image's datastore info, where the active
learning strategies (and any client, via GET /datastore/image/info) read them:

    "medanomaly": {"<model>": {"score", "uncertainty", "image_threshold", "is_anomalous", "model_version"}}
"""
from __future__ import annotations

import logging

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from ..inputs import load_image

logger = logging.getLogger(__name__)
INFO_KEY = "medanomaly"


def pick_model(configs: dict, request: dict):
    """The model a scoring or strategy request names, else the first trained one."""
    name = request.get("model")
    if name:
        if name not in configs:
            raise HTTPException(status_code=404, detail=f"unknown model {name!r}; models: {sorted(configs)}")
        if not configs[name].is_trained():
            raise HTTPException(status_code=409, detail=f"model {name} is not trained yet; POST /train/{name}")
        return configs[name]
    for config in configs.values():
        if config.is_trained():
            return config
    raise HTTPException(status_code=409, detail="no model is trained yet; POST /train/<model> first")


def score_image(config, datastore: Datastore, image_id: str) -> dict | None:
    """The image's score record, or None when the image is not for this model (a volume for a film model...)."""
    model = config.model()
    image = load_image(datastore.get_image_uri(image_id))
    if not config.accepts(image):
        return None
    with config.lock():
        result = model.predict(image)
    uncertainty_map = config.metadata.uncertainty_map  # the per-pixel uncertainty the model declares, if any
    uncertainty = float(np.mean(result.extras[uncertainty_map])) if uncertainty_map in result.extras else None
    return {"score": float(result.score), "uncertainty": uncertainty,
            "image_threshold": result.meta.get("image_threshold"), "is_anomalous": result.meta.get("is_anomalous"),
            "model_version": model.model_version}


def image_scores(config, datastore: Datastore, image_ids: list[str], refresh: bool = False) -> dict[str, dict]:
    """{image id: score record} for the model's current version, computing (and storing) what is missing."""
    version = config.model().model_version
    scores = {}
    for image_id in image_ids:
        info = datastore.get_image_info(image_id) or {}
        cached = (info.get(INFO_KEY) or {}).get(config.name)
        if not refresh and cached and cached.get("model_version") == version:
            scores[image_id] = cached
            continue
        try:
            record = score_image(config, datastore, image_id)
        except HTTPException as error:  # an unreadable image is skipped, not fatal
            logger.warning(f"cannot score {image_id}: {error.detail}")
            continue
        if record is None:
            continue
        stored = dict(info.get(INFO_KEY) or {})
        stored[config.name] = record
        datastore.update_image_info(image_id, {INFO_KEY: stored})
        scores[image_id] = record
    return scores


class AnomalyScoring(ScoringMethod):
    def __init__(self, configs: dict):
        super().__init__("Anomaly score of every image, kept in its datastore info under 'medanomaly'")
        self.configs = configs

    def __call__(self, request, datastore: Datastore):
        if request.get("model"):
            chosen = [pick_model(self.configs, request)]
        else:
            chosen = [config for config in self.configs.values() if config.is_trained()]
        image_ids = sorted(datastore.list_images())
        result = {}
        for config in chosen:
            result[config.name] = image_scores(config, datastore, image_ids, refresh=bool(request.get("refresh")))
        return {"scored": {name: len(scores) for name, scores in result.items()}, "scores": result}
