"""Model registry: name -> class. Every module in `medanomaly.methods` is imported on first use, so a new
model is one new file there; the CLI, the server and Slicer pick it up without any other change."""
from __future__ import annotations

import importlib
import pkgutil

from .errors import UnknownModelError

_REGISTRY: dict[str, type] = {}
_discovered = False


def register(name: str):
    """Class decorator: `@register("ae")` makes the model available as `create("ae")`."""

    def decorate(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    from . import methods

    for module in pkgutil.iter_modules(methods.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{methods.__name__}.{module.name}")
    _discovered = True


def list_models() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def model_class(name: str) -> type:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def create(name: str, **config):
    """A fresh (untrained) model of the registered class, with `config` overriding its defaults."""
    return model_class(name)(**config)


def describe_models() -> dict[str, dict]:
    """What a client needs to offer the models: description, kind, and the default config of each."""
    return {name: model_class(name).describe() for name in list_models()}
