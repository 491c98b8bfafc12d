"""Training settings are checked against each model's config before any work: the server and the CLI share the
validator, so both refuse the same settings with the same message."""
from __future__ import annotations

import math

import pytest

import medanomaly
from medanomaly.cli import main
from medanomaly.config_validation import ConfigError, validate_training_settings


@pytest.mark.parametrize("settings, words", [
    ({"epochs": -3}, "epochs must be >= 1"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"epochs": True}, "epochs must be an integer"),
    ({"minutes": "soon"}, "minutes must be a finite number > 0"),
    ({"minutes": 0}, "minutes must be > 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"learning_rate": math.nan}, "learning_rate must be a finite number > 0"),
    ({"learning_rate": -1e-3}, "learning_rate must be > 0"),
    ({"calibration_fpr": 1.5}, "calibration_fpr must be between 0 and 1"),
    ({"device": 0}, "device must be a string"),
    ({"epochz": 1}, "unknown training settings ['epochz']"),
])
def test_bad_settings_name_the_key_and_the_range(settings, words):
    with pytest.raises(ConfigError) as refused:
        validate_training_settings("ae", settings)
    assert words in str(refused.value)


def test_good_settings_are_coerced_to_their_default_types():
    settings = validate_training_settings("ae", {"epochs": 3.0, "minutes": 1, "learning_rate": 1, "seed": 7})
    assert settings == {"epochs": 3, "minutes": 1.0, "learning_rate": 1.0, "seed": 7}
    assert isinstance(settings["epochs"], int) and isinstance(settings["learning_rate"], float)


def test_every_registered_model_accepts_its_own_defaults():
    for name in medanomaly.list_models():
        defaults = medanomaly.model_class(name).describe()["default_config"]
        assert validate_training_settings(name, defaults) == defaults


def test_the_cli_refuses_the_same_settings_before_training(tmp_path, capsys):
    code = main(["train", "--model", "ae", "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m.pt"),
                 "--config", "epochs=-3"])
    assert code == 2
    assert "epochs must be >= 1, got -3" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
