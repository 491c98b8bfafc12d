"""Volumes as Slicer holds them (numpy array in K,J,I order + IJK-to-RAS matrix) and their NRRD files.

NRRD is read and written here with numpy alone, because Slicer's Python has numpy but not nibabel, and tests must
run without Slicer. Files are written in LPS (the convention of ITK and of Slicer's own NRRD writer); other
formats (NIfTI, MHA) go through SimpleITK, which Slicer bundles.
"""
from __future__ import annotations

import gzip
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VolumeFormatError

# RAS <-> LPS flips the first two world axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_NRRD_TYPES = {
    "uint8": ["uchar", "unsigned char", "uint8", "uint8_t"],
    "int8": ["signed char", "int8", "int8_t", "char"],
    "uint16": ["ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"],
    "int16": ["short", "short int", "signed short", "signed short int", "int16", "int16_t"],
    "uint32": ["uint", "unsigned int", "uint32", "uint32_t"],
    "int32": ["int", "signed int", "int32", "int32_t"],
    "uint64": ["ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"],
    "int64": ["longlong", "long long", "long long int", "signed long long", "int64", "int64_t"],
    "float32": ["float"],
    "float64": ["double"],
}
_DTYPE_OF_NRRD = {name: np.dtype(dtype) for dtype, names in _NRRD_TYPES.items() for name in names}
_NRRD_OF_DTYPE = {np.dtype(dtype): names[0] for dtype, names in _NRRD_TYPES.items()}


@dataclass
class Volume:
    """`array` indexed [k, j, i] (slicer.util.arrayFromVolume order); `ijk_to_ras` a 4x4 matrix.

    A 2D film is a single-slice volume: array shape (1, rows, columns).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim == 2:
            self.array = self.array[np.newaxis]
        if self.array.ndim != 3:
            raise VolumeFormatError(f"a volume needs 2 or 3 axes, got shape {self.array.shape}")
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=float).reshape(4, 4)

    @classmethod
    def from_slicer_array(cls, array: np.ndarray, ijk_to_ras) -> "Volume":
        """From slicer.util.arrayFromVolume: a colour film (a vector volume, [k, j, i, rgb]) becomes grey, since
        the models score one channel."""
        array = np.asarray(array)
        if array.ndim == 4:
            if array.shape[-1] not in (1, 3, 4):
                raise VolumeFormatError(f"a vector volume with {array.shape[-1]} components cannot be scored")
            array = array[..., :3].astype(np.float32).mean(axis=-1)
        return cls(array, ijk_to_ras)

    @classmethod
    def film(cls, pixels: np.ndarray, spacing=(1.0, 1.0)) -> "Volume":
        """A 2D film the way Slicer loads it: one slice, LPS-aligned axes (RAS diagonal -1, -1, 1)."""
        matrix = np.diag([-float(spacing[1]), -float(spacing[0]), 1.0, 1.0])
        return cls(np.asarray(pixels)[np.newaxis], matrix)

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple:
        """Spacing along i, j, k (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    def with_array(self, array: np.ndarray) -> "Volume":
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise VolumeFormatError(f"array shape {array.shape} does not match the volume grid {self.array.shape}")
        return Volume(array, self.ijk_to_ras.copy())

    def same_grid(self, other: "Volume", tolerance: float = 1e-4) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=tolerance))


def write_volume(volume: Volume, path, compress: bool = True) -> Path:
    """Write an NRRD (`.nrrd`/`.nhdr` not detached) atomically, or any SimpleITK format by extension."""
    path = Path(path)
    if path.suffix.lower() != ".nrrd":
        return _write_with_sitk(volume, path)
    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype not in _NRRD_OF_DTYPE:
        raise VolumeFormatError(f"cannot write pixel type {array.dtype} to NRRD")
    ijk_to_lps = RAS_TO_LPS @ volume.ijk_to_ras
    directions = " ".join(_vector(ijk_to_lps[:3, axis]) for axis in range(3))
    header = "\n".join([
        "NRRD0004",
        "# MedAnomaly volume",
        f"type: {_NRRD_OF_DTYPE[array.dtype]}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {array.shape[2]} {array.shape[1]} {array.shape[0]}",
        f"space directions: {directions}",
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {'gzip' if compress else 'raw'}",
        f"space origin: {_vector(ijk_to_lps[:3, 3])}",
    ]) + "\n\n"
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
    if compress:
        data = gzip.compress(data, compresslevel=1)
    _atomic_write(path, header.encode("ascii") + data)
    return path


def read_volume(path) -> Volume:
    """Read an NRRD with numpy, any other format with SimpleITK."""
    path = Path(path)
    if path.suffix.lower() == ".nrrd":
        return _read_nrrd(path)
    return _read_with_sitk(path)


def temporary_path(suffix: str = ".nrrd") -> Path:
    handle, name = tempfile.mkstemp(prefix="medanomaly-", suffix=suffix)
    os.close(handle)
    return Path(name)


def _vector(values) -> str:
    return "(" + ",".join(f"{float(v):.17g}" for v in values) + ")"


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_nrrd(path: Path) -> Volume:
    raw = path.read_bytes()
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise VolumeFormatError(f"{path.name} is not an NRRD file (no NRRD magic or header end)")
    fields = {}
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    if "data file" in fields or "datafile" in fields:
        raise VolumeFormatError(f"{path.name}: detached NRRD data files are not supported")
    try:
        dtype = _DTYPE_OF_NRRD[fields["type"].lower()]
        sizes = [int(v) for v in fields["sizes"].split()]
    except KeyError as missing:
        raise VolumeFormatError(f"{path.name}: NRRD header lacks or has an unknown {missing}") from None
    if fields.get("endian", "little").lower() == "big":
        dtype = dtype.newbyteorder(">")
    encoding = fields.get("encoding", "raw").lower()
    payload = raw[end + 2:]
    if encoding in ("gzip", "gz"):
        payload = gzip.decompress(payload)
    elif encoding != "raw":
        raise VolumeFormatError(f"{path.name}: NRRD encoding '{encoding}' is not supported (raw or gzip only)")
    count = int(np.prod(sizes))
    if len(payload) < count * dtype.itemsize:
        raise VolumeFormatError(f"{path.name}: NRRD data is truncated")
    # NRRD lists the fastest axis first; numpy wants it last.
    array = np.frombuffer(payload, dtype=dtype, count=count).reshape(sizes[::-1]).astype(dtype.newbyteorder("="))
    directions = _parse_directions(fields.get("space directions"), len(sizes))
    origin = _parse_vectors(fields.get("space origin", ""))
    origin = origin[0] if origin else [0.0] * len(directions[0] if directions else [0.0, 0.0, 0.0])
    space = fields.get("space", "").lower()
    if array.ndim == 2:  # a 2D image: embed it in 3D as one slice of unit thickness
        array = array[np.newaxis]
        directions = [list(d) + [0.0] * (3 - len(d)) for d in directions] + [[0.0, 0.0, 1.0]]
        origin = list(origin) + [0.0] * (3 - len(origin))
    if array.ndim != 3 or len(directions) != 3:
        raise VolumeFormatError(f"{path.name}: only scalar 2D/3D NRRD volumes are supported (sizes {sizes})")
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(directions, dtype=float).T
    matrix[:3, 3] = origin
    if space in ("left-posterior-superior", "left-posterior", "lps", ""):
        matrix = RAS_TO_LPS @ matrix
    elif space not in ("right-anterior-superior", "ras"):
        raise VolumeFormatError(f"{path.name}: NRRD space '{space}' is not supported")
    return Volume(array, matrix)


def _parse_vectors(text: str) -> list:
    return [[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)", text or "")]


def _parse_directions(text, dimension: int) -> list:
    if not text:
        return [list(row) for row in np.eye(dimension)]
    vectors = _parse_vectors(text)
    if "none" in text.lower() or len(vectors) != dimension:
        raise VolumeFormatError("multi-component NRRD (a 'none' space direction) is not supported")
    return vectors


def _sitk():
    try:
        import SimpleITK
    except ImportError:
        raise VolumeFormatError("reading or writing this format needs SimpleITK (bundled with Slicer); "
                                "use .nrrd otherwise") from None
    return SimpleITK


def _read_with_sitk(path: Path) -> Volume:
    sitk = _sitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise VolumeFormatError(f"cannot read {path.name}: {str(error).strip().splitlines()[-1]}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeFormatError(f"{path.name}: only scalar volumes are supported")
    array = sitk.GetArrayFromImage(image)
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise VolumeFormatError(f"{path.name}: {dimension}D images are not supported")
    direction = np.eye(3)
    direction[:dimension, :dimension] = np.array(image.GetDirection()).reshape(dimension, dimension)
    spacing = list(image.GetSpacing()) + [1.0] * (3 - dimension)
    origin = list(image.GetOrigin()) + [0.0] * (3 - dimension)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(spacing)[np.newaxis, :]
    matrix[:3, 3] = origin
    return Volume(array, RAS_TO_LPS @ matrix)


def _write_with_sitk(volume: Volume, path: Path) -> Path:
    sitk = _sitk()
    ijk_to_lps = RAS_TO_LPS @ volume.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
    image.SetDirection([float(v) for v in (ijk_to_lps[:3, :3] / spacing).ravel()])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part{''.join(path.suffixes)}")
    try:
        sitk.WriteImage(image, str(partial), useCompression=True)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
