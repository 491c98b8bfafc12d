"""Training settings checked before any work starts, by the server (POST /train/<model>) and the CLI (`--config`)
alike: every key must be one of the model's config keys (or `minutes`), typed like its default, and within range.

    validate_training_settings("ae", {"epochs": 3, "minutes": 1.5})  # -> the settings, coerced
    validate_training_settings("ae", {"epochs": -3})  # ConfigError: epochs must be an integer >= 1, got -3
"""
from __future__ import annotations

import math

from .errors import MedAnomalyError


class ConfigError(MedAnomalyError, ValueError):
    """A training setting is unknown, of the wrong type, or out of range; the message names the key."""


# key -> (lowest, lowest allowed itself?) for the settings every model shares; others are checked by type only
RANGES = {
    "epochs": (1, True),
    "batch_size": (1, True),
    "predict_batch_size": (1, True),
    "learning_rate": (0.0, False),
    "minutes": (0.0, False),
    "seed": (0, True),
}
UNIT_INTERVAL = ("calibration_fpr", "calibration_pixel_fpr")  # rates strictly between 0 and 1
EXTRA_KEYS = {"minutes": 1.0}  # accepted beside the model's config keys; typed from this example value


def validate_training_settings(model, settings: dict) -> dict:
    """The settings with each value coerced to its default's type (an integral 3.0 becomes 3); raises ConfigError
    naming the first offending key. `model` is a registered name or an AnomalyModel class."""
    from .registry import model_class

    cls = model_class(model) if isinstance(model, str) else model
    if not isinstance(settings, dict):
        raise ConfigError(f"training settings must be a JSON object, got {type(settings).__name__}")
    defaults = {**cls.describe()["default_config"], **EXTRA_KEYS}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown training settings {unknown} for {cls.name}; known: {sorted(defaults)}")
    return {key: _checked(key, value, defaults[key]) for key, value in settings.items()}


def _checked(key: str, value, default):
    if value is None and (default is None or key == "minutes"):
        return None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        integral = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ConfigError(f"{key} must be an integer{_range_text(key)}, got {value!r}")
        return _in_range(key, int(value))
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number{_range_text(key)}, got {value!r}")
        return _in_range(key, float(value))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list like {list(default)!r}, got {value!r}")
        return type(default)(value)
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"{key} must be an object like {default!r}, got {value!r}")
    return value


def _in_range(key: str, value):
    if key in RANGES:
        lowest, inclusive = RANGES[key]
        if value < lowest or (value == lowest and not inclusive):
            raise ConfigError(f"{key} must be{_range_text(key)}, got {value!r}")
    if key in UNIT_INTERVAL and not 0 < value < 1:
        raise ConfigError(f"{key} must be{_range_text(key)}, got {value!r}")
    return value


def _range_text(key: str) -> str:
    if key in RANGES:
        lowest, inclusive = RANGES[key]
        return f" {'>=' if inclusive else '>'} {lowest}"
    if key in UNIT_INTERVAL:
        return " between 0 and 1 (exclusive)"
    return ""
