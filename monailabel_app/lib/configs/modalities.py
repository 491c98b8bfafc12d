"""Which images each model is meant for, used by the modality screen.

A model class may declare `modalities` / `body_parts` itself; otherwise its name and description decide (brain
MRI, chest films...), then the family it belongs to (films for the film and classifier bases), and the `modalities_<model>` / `body_parts_<model>` conf options override both.
`None` means "no screen": any image is accepted."""
from __future__ import annotations

FILM_MODALITIES = ("CR", "DX", "MG", "RG", "OT")
VOLUME_MODALITIES = ("MR",)

# Models whose name alone says what they are for (the registry does not record it).
BY_NAME: dict[str, dict] = {}


def expected_for(name: str, cls, conf: dict) -> tuple[tuple | None, tuple | None]:
    modalities = getattr(cls, "modalities", None)
    body_parts = getattr(cls, "body_parts", None)
    if modalities is None and name in BY_NAME:
        modalities = BY_NAME[name].get("modalities")
        body_parts = BY_NAME[name].get("body_parts", body_parts)
    if modalities is None:
        modalities = _by_words(name, getattr(cls, "description", "") or "")
    if modalities is None:
        modalities = _by_family(cls)
    modalities = _conf_list(conf, f"modalities_{name}", modalities)
    body_parts = _conf_list(conf, f"body_parts_{name}", body_parts)
    return (tuple(m.upper() for m in modalities) if modalities else None,
            tuple(b.upper() for b in body_parts) if body_parts else None)


def _by_words(name: str, description: str) -> tuple | None:
    """What a model's name and description say it reads (brain MRI, chest films...)."""
    text = f"{name} {description}".lower()
    if any(word in text for word in ("brain", "mri", "mr volume")):
        return VOLUME_MODALITIES
    if any(word in text for word in ("film", "chest", "cxr", "x-ray", "mammo", "radiograph")):
        return FILM_MODALITIES
    return None


def _by_family(cls) -> tuple | None:
    from medanomaly.classifier import ClassifierModel
    from medanomaly.reconstruction import FilmReconstructionModel

    if issubclass(cls, (FilmReconstructionModel, ClassifierModel)):
        return FILM_MODALITIES
    return None


def _conf_list(conf: dict, key: str, default):
    value = conf.get(key)
    if value is None:
        return default
    value = str(value).strip()
    if value.lower() in ("", "any", "none", "*"):
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())
