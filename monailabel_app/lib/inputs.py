"""Everything the server accepts from a request, checked before any work: image ids, request params, the image
itself (a file, or a folder of DICOM files from a DICOMweb datastore) and the modality screen."""
from __future__ import annotations

import math
import re
from pathlib import Path

from fastapi import HTTPException

from medanomaly.errors import UnsupportedImageError
from medanomaly.io import MedicalImage, read_dicom_series, read_image

# An image id is a plain name: a file stem in a local datastore, a UID from DICOMweb. No separators, no "..".
IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
LABEL_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Keys MONAI Label itself puts into an infer request or that its clients send; they are not model options.
MONAI_LABEL_KEYS = {
    "model", "image", "description", "device", "label_tag", "save_label", "session", "timeout", "client_id",
    "result_extension", "result_dtype", "result_compress", "label_info", "label", "cache_transforms", "gpus",
}
LABEL_FORMATS = {"nii.gz": ".nii.gz", "nrrd": ".nrrd", "nii": ".nii"}


def bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


def unprocessable(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=message)


def check_image_id(image_id: str) -> str:
    if not isinstance(image_id, str) or not IMAGE_ID.match(image_id) or ".." in image_id:
        raise bad_request(f"invalid image id {image_id!r}: use letters, digits, '.', '_' and '-' only "
                          "(no path separators, no '..')")
    return image_id


def check_label_tag(tag: str) -> str:
    if not LABEL_TAG.match(tag or ""):
        raise bad_request(f"invalid label tag {tag!r}: use letters, digits, '_' and '-' only")
    return tag


def parse_params_json(text: str | None) -> dict:
    import json

    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise bad_request(f"params is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise bad_request(f"params must be a JSON object, got {type(value).__name__}")
    return value


def infer_options(request: dict, model_cls) -> tuple[float | None, dict, str]:
    """(threshold, model options, labelmap suffix) from an infer request; unknown keys are a 400."""
    allowed = set(model_cls.inference_keys)
    own = {"threshold", "label_format"}
    unknown = sorted(key for key in request if key not in MONAI_LABEL_KEYS | own | allowed and not key.startswith("_"))
    if unknown:
        raise bad_request(f"unknown params {unknown} for model {model_cls.name!r}; allowed: "
                          f"{sorted(own | allowed)}")
    threshold = request.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise bad_request(f"threshold must be a finite number, got {threshold!r}")
        threshold = float(threshold)
    label_format = request.get("label_format", "nii.gz")
    if label_format not in LABEL_FORMATS:
        raise bad_request(f"label_format must be one of {sorted(LABEL_FORMATS)}, got {label_format!r}")
    defaults = model_cls.describe()["default_config"]
    options = {}
    for key in allowed & set(request):
        options[key] = _coerce_option(key, request[key], defaults.get(key))
    return threshold, options, LABEL_FORMATS[label_format]


def _coerce_option(key: str, value, default):
    """A per-request option must have the type of its default (a bool stays a bool, a count an int)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad_request(f"option {key} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise bad_request(f"option {key} must be an integer, got {value!r}")
        if value < 0:
            raise bad_request(f"option {key} must not be negative, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad_request(f"option {key} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise bad_request(f"option {key} must be a string, got {value!r}")
    return value


def load_image(path: str | Path) -> MedicalImage:
    """Read what the datastore or an upload gives: an image file, or a folder of DICOM files (DICOMweb)."""
    path = Path(path)
    try:
        if path.is_dir():
            return read_dicom_series(path)
        return read_image(path)
    except UnsupportedImageError as error:
        raise unprocessable(f"cannot use this image: {error}") from None
    except FileNotFoundError as error:
        raise HTTPException(status_code=404, detail=str(error)) from None


def check_image_size(image: MedicalImage, smallest: int, model: str) -> None:
    """A film or slice with a side under the model's smallest size is refused (422) with the reason."""
    height, width = image.array.shape[-2:]
    if min(height, width) < smallest:
        raise unprocessable(f"image of {width} x {height} pixels is too small for model {model}: each side must be at "
                            f"least {smallest} pixels")


def modality_check(image: MedicalImage, modalities, body_parts, mode: str) -> dict:
    """Compare the image's DICOM Modality / BodyPartExamined with what the model expects.

    mode "refuse": a mismatch is a 422; "flag": reported in the result only; "off": not checked."""
    modality = (image.meta.get("modality") or "").upper() or None
    body_part = (image.meta.get("body_part") or "").upper() or None
    report = {"status": "unknown", "modality": modality, "body_part": body_part,
              "expected": list(modalities) if modalities else None,
              "expected_body_parts": list(body_parts) if body_parts else None, "message": ""}
    if mode == "off":
        report.update(status="off", message="modality screen disabled")
        return report
    problems = []
    if modality and modalities and modality not in modalities:
        problems.append(f"modality {modality} is not one of {list(modalities)}")
    if body_part and body_parts and body_part not in body_parts:
        problems.append(f"body part {body_part} is not one of {list(body_parts)}")
    if problems:
        report.update(status="mismatch", message="; ".join(problems))
    elif modality or body_part:
        report.update(status="ok", message="matches the model")
    else:
        report["message"] = "the image carries no DICOM modality; not screened"
    return report
