"""What a model declares about the images it takes, read from its class (exposed by `describe()`): DICOM
modalities, body parts, the name of its uncertainty map and its smallest image side. The conf options
`modalities_<model>` / `body_parts_<model>` override the first two ("any" disables the screen). A model that
declares no modalities gets no modality screen."""
from __future__ import annotations

from dataclasses import dataclass

FILM_MODALITIES = ("CR", "DX", "MG", "RG", "OT")
VOLUME_MODALITIES = ("MR",)
MIN_IMAGE_SIDE = 32  # the floor for a model that states none: a 1 x 1 "image" is not scored


@dataclass(frozen=True)
class ModelMetadata:
    modalities: tuple | None
    body_parts: tuple | None
    uncertainty_map: str | None
    min_image_size: int

    def takes_films(self) -> bool | None:
        """True for film models, False for volume (MR) models, None when the modalities do not say."""
        if not self.modalities:
            return None
        if set(self.modalities) <= set(VOLUME_MODALITIES):
            return False
        if set(self.modalities) <= set(FILM_MODALITIES):
            return True
        return None


def model_metadata(name: str, cls, conf: dict) -> ModelMetadata:
    declared = {**{key: getattr(cls, key, None) for key in ("modalities", "body_parts", "uncertainty_map",
                                                            "min_image_size")}, **cls.describe()}
    modalities = _conf_list(conf, f"modalities_{name}", declared["modalities"])
    body_parts = _conf_list(conf, f"body_parts_{name}", declared["body_parts"])
    smallest = declared["min_image_size"]
    if isinstance(smallest, (list, tuple)):
        smallest = min(smallest) if smallest else None
    return ModelMetadata(modalities=tuple(m.upper() for m in modalities) if modalities else None,
                         body_parts=tuple(b.upper() for b in body_parts) if body_parts else None,
                         uncertainty_map=declared["uncertainty_map"] or None,
                         min_image_size=int(smallest) if smallest else MIN_IMAGE_SIDE)


def _conf_list(conf: dict, key: str, default):
    value = conf.get(key)
    if value is None:
        return default
    value = str(value).strip()
    if value.lower() in ("", "any", "none", "*"):
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())
