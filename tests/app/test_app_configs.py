"""The app's task configs, in this process: a model registered in `medanomaly` is served with no change to the app,
as one MONAI Label TaskConfig giving its infer and train tasks, and what /info/ shows about it (modalities, body
parts, uncertainty map, smallest image side) is what the model class declares."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from fastapi import HTTPException
from monailabel_server import REPO

import medanomaly
from medanomaly import registry
from medanomaly.io import MedicalImage

sys.path.insert(0, str(REPO / "monailabel_app"))

from lib.configs import AnomalyTaskConfig, model_configs  # noqa: E402
from lib.results import ResultStore  # noqa: E402

NAME = "throwaway-brain-test-model"


@pytest.fixture
def throwaway_model():
    """A model added the way every model is (one registered class), declaring its own metadata."""

    @registry.register(NAME)
    class ThrowawayBrainModel(medanomaly.model_class("ae")):
        description = "a model that exists for this test only"
        modalities = ("MR",)
        body_parts = ("BRAIN",)
        uncertainty_map = "U"
        min_image_size = 48

    try:
        yield ThrowawayBrainModel
    finally:
        registry._REGISTRY.pop(NAME, None)


def configs_for(tmp_path, conf: dict):
    return model_configs(tmp_path / "models", conf, results=ResultStore(tmp_path / "maps"),
                         label_dir=tmp_path / "out", modality_mode="refuse", train_defaults={"epochs": 1})


def test_a_registered_model_is_served_with_its_declared_metadata(tmp_path, throwaway_model):
    configs = configs_for(tmp_path, {})
    assert set(configs) == set(medanomaly.list_models()) and NAME in configs
    config = configs[NAME]
    assert isinstance(config, AnomalyTaskConfig)
    info = config.infer().info()  # the block /info/ lists under models.<name>
    assert info["description"] == "a model that exists for this test only"
    assert {key: info["medanomaly"][key] for key in ("modalities", "body_parts", "uncertainty_map", "min_image_size")} \
        == {"modalities": ["MR"], "body_parts": ["BRAIN"], "uncertainty_map": "U", "min_image_size": 48}
    assert info["medanomaly"]["trained"] is False
    assert config.trainer().config()["epochs"] == 1

    # the metadata drives which images the model takes and the size floor
    assert config.accepts(MedicalImage(np.zeros((3, 64, 64), np.float32), meta={"modality": "MR"}))
    assert not config.accepts(MedicalImage(np.zeros((64, 64), np.float32), meta={"modality": "CR"}))
    assert not config.accepts(MedicalImage(np.zeros((64, 64), np.float32)))  # a film, for a volume model


def test_conf_overrides_the_declared_modalities(tmp_path, throwaway_model):
    config = configs_for(tmp_path, {"models": NAME, f"modalities_{NAME}": "any", f"body_parts_{NAME}": "CHEST"})[NAME]
    assert config.modalities is None and config.body_parts == ("CHEST",)


def test_an_image_under_the_declared_size_is_refused_with_the_reason(tmp_path, throwaway_model, kermany_films):
    from monailabel_server import publish_quick_model

    publish_quick_model(tmp_path / "models", kermany_films["NORMAL"][:2], NAME, epochs=1)
    task = configs_for(tmp_path, {"models": NAME, f"modalities_{NAME}": "any"})[NAME].infer()
    small = tmp_path / "small.nii.gz"
    medanomaly.io.write_image(MedicalImage(np.ones((40, 64), np.float32)), small)
    with pytest.raises(HTTPException) as refused:
        task({"model": NAME, "image": str(small)})
    assert refused.value.status_code == 422 and "64 x 40" in refused.value.detail and "48" in refused.value.detail
