"""Data manifests: one CSV row per case (an image, its label and optional lesion annotations).

Columns (only `image` and `label` are required):

- `image`   path of the image, relative to the CSV's folder or absolute.
- `label`   0 normal / 1 abnormal, or class names ("No Finding", "Cardiomegaly"); several names joined by "|".
- `mask`    path of a lesion mask with the image's grid; voxels > 0 are lesion.
- `circle`  "x,y,r" in pixel coordinates of the image (x = column, y = row from the top); several joined by ";".
- `box`     "x,y,w,h" in the same coordinates; several joined by ";".
- `slice`   axial index (numpy axis 0) into a volume: the case is that 2D slice.
- `roi`     path of a region mask restricting pixel metrics (e.g. the brain).
- `patient` group key, so that splits never share a patient.
Any other column is kept in `Case.extra`.
"""
from __future__ import annotations

import csv
import functools
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_destination
from ..errors import ManifestError

REQUIRED_COLUMNS = ("image", "label")
OPTIONAL_COLUMNS = ("mask", "circle", "box", "slice", "roi", "patient")
# Label values meaning "no anomaly"; compared case-insensitively.
NORMAL_LABEL_NAMES = frozenset({"0", "normal", "no finding"})


@dataclass
class Case:
    """One manifest row with absolute paths and parsed shapes."""

    image: Path
    label: int | str
    mask: Path | None = None
    circles: list = field(default_factory=list)  # [(x, y, r), ...]
    boxes: list = field(default_factory=list)  # [(x, y, w, h), ...]
    slice: int | None = None
    roi: Path | None = None
    patient: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def label_names(self) -> list[str]:
        """The label split into its names ("Cardiomegaly|Effusion" -> two names)."""
        return [name.strip() for name in str(self.label).split("|") if name.strip()]

    @property
    def is_abnormal(self) -> bool:
        """True when any label name is not a normal name (so 1, "abnormal", "pneumonia", "Cardiomegaly")."""
        names = self.label_names
        return bool(names) and any(name.lower() not in NORMAL_LABEL_NAMES for name in names)

    @property
    def has_pixel_annotation(self) -> bool:
        return self.mask is not None or bool(self.circles) or bool(self.boxes)


@dataclass
class LoadedCase:
    """A case with pixels: the image (a 2D slice when the case names one), lesion mask and region of interest."""

    image: "MedicalImage"  # noqa: F821 - imported lazily to keep CSV handling free of image readers
    mask: np.ndarray | None
    roi: np.ndarray | None
    label: int | str
    is_abnormal: bool
    case: Case | None = None


# ---------------------------------------------------------------------------------------------- parsing


def parse_shapes(text: str, n_values: int, what: str) -> list[tuple]:
    """Parse "a,b,c;a,b,c" into tuples of `n_values` floats; raise ValueError with the reason."""
    shapes = []
    if text is None or not str(text).strip():
        return shapes
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        fields = [v.strip() for v in part.split(",")]
        if len(fields) != n_values:
            raise ValueError(f"{what} {part!r} needs {n_values} comma-separated numbers")
        try:
            values = tuple(float(v) for v in fields)
        except ValueError:
            raise ValueError(f"{what} {part!r} has a value that is not a number") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{what} {part!r} has a non-finite value")
        if what == "circle" and values[2] <= 0:
            raise ValueError(f"circle {part!r} needs a positive radius")
        if what == "box" and (values[2] <= 0 or values[3] <= 0):
            raise ValueError(f"box {part!r} needs a positive width and height")
        shapes.append(values)
    return shapes


def format_shapes(shapes) -> str:
    """Inverse of parse_shapes; integers are written without a trailing ".0"."""
    def number(v):
        v = float(v)
        return str(int(v)) if v.is_integer() else repr(round(v, 3))

    return ";".join(",".join(number(v) for v in shape) for shape in shapes or [])


def _parse_label(text: str) -> int | str:
    text = str(text).strip()
    return int(text) if text in ("0", "1") else text


def _resolve(base: Path, text: str) -> Path:
    path = Path(text.strip())
    return path if path.is_absolute() else (base / path).resolve()


def read_manifest(csv_path, check_files: bool = True) -> list[Case]:
    """Read a manifest into Cases with absolute paths.

    Raises ManifestError naming the row (1 = first data row) and the problem: missing required column,
    empty image or label, missing file (when `check_files`), malformed circle/box or slice.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"manifest {csv_path} does not exist")
    base = csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(f"manifest {csv_path} lacks required column(s) {missing}; it has {columns}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]

    cases = []
    for number, row in enumerate(rows, start=1):
        where = f"manifest {csv_path} row {number}"
        try:
            cases.append(_row_to_case(row, base, check_files))
        except (ValueError, FileNotFoundError) as error:
            raise ManifestError(f"{where}: {error}") from None
    return cases


def _row_to_case(row: dict, base: Path, check_files: bool) -> Case:
    if not row.get("image"):
        raise ValueError("empty image path")
    if not row.get("label"):
        raise ValueError("empty label")

    paths = {}
    for column in ("image", "mask", "roi"):
        if row.get(column):
            paths[column] = _resolve(base, row[column])
            if check_files and not paths[column].exists():
                raise FileNotFoundError(f"{column} file {paths[column]} does not exist")

    slice_index = None
    if row.get("slice"):
        try:
            slice_index = int(float(row["slice"]))
        except ValueError:
            raise ValueError(f"slice {row['slice']!r} is not an integer") from None
        if slice_index < 0:
            raise ValueError(f"slice {slice_index} is negative")

    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    return Case(
        image=paths["image"],
        label=_parse_label(row["label"]),
        mask=paths.get("mask"),
        circles=parse_shapes(row.get("circle"), 3, "circle"),
        boxes=parse_shapes(row.get("box"), 4, "box"),
        slice=slice_index,
        roi=paths.get("roi"),
        patient=row.get("patient") or None,
        extra={k: v for k, v in row.items() if k and k not in known},
    )


# ---------------------------------------------------------------------------------------------- writing


def _case_to_row(case: Case) -> dict:
    row = {
        "image": case.image,
        "label": case.label,
        "mask": case.mask,
        "circle": format_shapes(case.circles),
        "box": format_shapes(case.boxes),
        "slice": case.slice,
        "roi": case.roi,
        "patient": case.patient,
    }
    row.update(case.extra or {})
    return row


def _relative(path, base: Path) -> str:
    """Path written relative to the manifest's folder so that the pair can move together."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)  # already relative to the CSV by the caller's convention
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def write_manifest(cases_or_rows, csv_path) -> Path:
    """Write Cases or dict rows (same column names; `circle`/`box` may be lists of tuples) to `csv_path`.

    Absolute paths are written relative to the CSV's folder. Optional columns appear only when some row uses
    them. The file is written to a temporary file first and then renamed, so a reader never sees half a file.
    """
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    base.mkdir(parents=True, exist_ok=True)

    rows = []
    for item in cases_or_rows:
        row = _case_to_row(item) if isinstance(item, Case) else dict(item)
        for column in ("circle", "box"):
            if isinstance(row.get(column), (list, tuple)):
                row[column] = format_shapes(row[column])
        for column in ("image", "mask", "roi"):
            if row.get(column) not in (None, ""):
                row[column] = _relative(row[column], base)
        rows.append({k: ("" if v is None else v) for k, v in row.items()})

    for number, row in enumerate(rows, start=1):
        if any(row.get(c, "") == "" for c in REQUIRED_COLUMNS):
            raise ManifestError(f"row {number} to write to {csv_path} lacks image or label: {row}")

    columns = list(REQUIRED_COLUMNS)
    columns += [c for c in OPTIONAL_COLUMNS if any(row.get(c, "") != "" for row in rows)]
    extra_columns = OrderedDict()
    for row in rows:
        for key in row:
            if key not in REQUIRED_COLUMNS and key not in OPTIONAL_COLUMNS:
                extra_columns[key] = None
    columns += list(extra_columns)

    with atomic_destination(csv_path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return csv_path


# ---------------------------------------------------------------------------------------------- pixels


def rasterize_shapes(shape_hw, circles=(), boxes=()) -> np.ndarray:
    """uint8 (H, W) mask, 1 inside any circle (x, y, r) or box (x, y, w, h); x = column, y = row from top.

    A pixel is inside a circle when its centre index lies within r of (x, y). A box covers the columns
    floor(x) .. ceil(x + w) - 1 and rows floor(y) .. ceil(y + h) - 1, clipped to the image.
    """
    height, width = int(shape_hw[0]), int(shape_hw[1])
    mask = np.zeros((height, width), dtype=np.uint8)
    rows = np.arange(height, dtype=np.float64)[:, None]
    cols = np.arange(width, dtype=np.float64)[None, :]
    for x, y, r in circles or []:
        mask[(cols - x) ** 2 + (rows - y) ** 2 <= r * r] = 1
    for x, y, w, h in boxes or []:
        c0, c1 = max(int(math.floor(x)), 0), min(int(math.ceil(x + w)), width)
        r0, r1 = max(int(math.floor(y)), 0), min(int(math.ceil(y + h)), height)
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = 1
    return mask


# ---------------------------------------------------------------------------------------------- loading

# Volumes stay cached because a volume manifest has one row per slice: loading slice after slice of the
# same BraTS case must not decompress the same NIfTI 155 times. Small, since each entry is tens of MB.
_VOLUME_CACHE_SIZE = 4


@functools.lru_cache(maxsize=_VOLUME_CACHE_SIZE)
def _read_cached_image(path: str):
    from ..io import read_image  # lazy: CSV handling must not need the image readers

    return read_image(path)


@functools.lru_cache(maxsize=2 * _VOLUME_CACHE_SIZE)
def _read_cached_binary(path: str) -> np.ndarray:
    return _read_binary(path)


def clear_cache() -> None:
    """Forget the cached volumes (e.g. after the files changed on disk)."""
    _read_cached_image.cache_clear()
    _read_cached_binary.cache_clear()


def _read_binary(path: str) -> np.ndarray:
    """uint8 array, 1 where the mask file is > 0 (any channel for a colour PNG)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ManifestError(f"cannot read mask {path}: {error}") from None
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:  # colour PNG: lesion where any channel is set
        array = array.max(axis=-1)
    return (array > 0).astype(np.uint8)


def _binary_like(path: Path, image_shape: tuple, volume_shape: tuple | None, slice_index: int | None, what: str):
    """Read a mask/roi onto the image's grid: the same slice of a volume, or the 2D image itself."""
    array = _read_cached_binary(str(path)) if slice_index is not None else _read_binary(str(path))
    if slice_index is not None:
        if array.shape != volume_shape:
            raise ManifestError(f"{what} {path} has shape {array.shape}, the volume {volume_shape}")
        return array[slice_index].copy()
    if array.ndim == len(image_shape) + 1 and array.shape[0] == 1:  # a 2D mask stored as one-slice volume
        array = array[0]
    elif array.ndim + 1 == len(image_shape) and image_shape[0] == 1:  # a 2D mask for a one-slice volume
        array = array[None]
    if array.shape != tuple(image_shape):
        raise ManifestError(f"{what} {path} has shape {array.shape}, the image {tuple(image_shape)}")
    return array


def _slice_of(volume, index: int):
    """The axial slice `index` (numpy axis 0) of a volume as a 2D MedicalImage on a sensible 2D grid.

    In-plane spacing and direction are the volume's x/y ones; the 2D origin is the x/y of the slice's first
    voxel. The slice's full 3D position stays in meta so that a map can be put back into the volume.
    """
    from ..io.image import MedicalImage

    depth = volume.array.shape[0]
    if not 0 <= index < depth:
        raise ManifestError(f"slice {index} is outside the volume {volume.meta.get('source', '')} of depth {depth}")
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    origin_3d = np.asarray(volume.origin) + direction @ (np.asarray(volume.spacing) * np.array([0.0, 0.0, index]))
    return MedicalImage(
        array=volume.array[index].copy(),
        spacing=volume.spacing[:2],
        origin=tuple(origin_3d[:2]),
        direction=tuple(direction[:2, :2].ravel()),
        meta={
            **volume.meta,
            "slice_index": int(index),
            "slice_origin_3d": tuple(float(v) for v in origin_3d),
            "volume_shape": tuple(volume.array.shape),
            "volume_spacing": tuple(volume.spacing),
            "volume_direction": tuple(volume.direction),
        },
    )


def load_case(case: Case) -> LoadedCase:
    """Read a case's pixels: image (the 2D slice when `slice` is set), lesion mask and region of interest.

    `mask` is uint8 (1 = lesion) with the image's shape, from the mask file (> 0) united with the circles and
    boxes, or None when the case has no pixel annotation. `roi` is a bool array or None.
    Raises ManifestError when shapes disagree or a slice index is out of range.
    """
    image_path = str(case.image)
    volume_shape = None
    if case.slice is not None:
        volume = _read_cached_image(image_path)
        if volume.array.ndim != 3:
            raise ManifestError(f"case {image_path} names slice {case.slice} but the image is not a volume")
        volume_shape = tuple(volume.array.shape)
        image = _slice_of(volume, case.slice)
    else:
        from ..io import read_image

        image = read_image(image_path)

    mask = None
    if case.mask is not None:
        mask = _binary_like(case.mask, image.shape, volume_shape, case.slice, "mask")
    if case.circles or case.boxes:
        if image.array.ndim != 2:
            raise ManifestError(f"case {image_path}: circles/boxes need a 2D image or a slice, got {image.shape}")
        shapes = rasterize_shapes(image.shape, case.circles, case.boxes)
        mask = shapes if mask is None else np.maximum(mask, shapes)

    roi = None
    if case.roi is not None:
        roi = _binary_like(case.roi, image.shape, volume_shape, case.slice, "roi").astype(bool)

    return LoadedCase(image=image, mask=mask, roi=roi, label=case.label, is_abnormal=case.is_abnormal, case=case)
