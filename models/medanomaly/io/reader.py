"""Read any supported medical image file into a `MedicalImage` (float32, numpy order, SimpleITK geometry).

Formats, recognised by their magic bytes first (the extension only decides for DICOM without preamble):
PNG, JPEG, BMP, TIFF (films), DICOM (see `dicom.py`), NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd).

Shapes: a film is (H, W). A volume is (D, H, W); a single-slice NIfTI/NRRD/MHA volume stays (1, H, W) because
Slicer uploads 2D films that way and the map must come back on the same grid. Only a singleton that is an
artefact of the file format is dropped: a single-page TIFF read as 3D, a 4D file whose 4th axis has length 1.

Colour policy (PNG, JPEG, DICOM RGB/YBR/PALETTE, any multi-component file):
- an alpha channel is dropped (noted);
- red, green and blue equal within 1 % of the value range: a grey film stored as colour (common for JPEG chest
  films and for ultrasound); converted to grey (channel mean) and noted;
- channels that really differ (a colour photo, Doppler ultrasound, a coloured overlay): UnsupportedImageError,
  because the models score intensity and would silently mis-score colour.

Every refusal is an UnsupportedImageError that says what was wrong; library tracebacks never escape.
"""
from __future__ import annotations

import gzip
import re
import tempfile
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk

from ..errors import UnsupportedImageError
from .dicom import DecodedPixels, read_dicom
from .image import MedicalImage

DEFAULT_MAX_PIXELS = 50_000_000
HEADER_BYTES = 512
RASTER_FORMATS = {"png", "jpeg", "bmp", "tiff"}
# ITK reader per format: naming it avoids ITK guessing from the extension when the content says otherwise
ITK_IMAGE_IO = {"png": "PNGImageIO", "jpeg": "JPEGImageIO", "bmp": "BMPImageIO", "tiff": "TIFFImageIO",
                "nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "metaimage": "MetaImageIO"}
# Channels whose largest difference is within this share of the value range count as equal (JPEG chroma noise)
GREY_TOLERANCE = 0.01


def read_image(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> MedicalImage:
    """Read a film or a volume; raises FileNotFoundError or UnsupportedImageError (with the reason)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image file: {path}")
    if not path.is_file():
        raise UnsupportedImageError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise UnsupportedImageError(f"empty file (0 bytes): {path.name}")

    image_format = detect_format(path)
    _refuse_truncated_film(path, image_format)

    def check_size(shape):
        _check_pixel_budget(shape, max_pixels)

    if image_format == "dicom":
        decoded = read_dicom(path, check_size)
    elif image_format == "dicom-without-preamble":
        decoded = read_dicom(path, check_size, force=True)
    else:
        decoded = _read_with_sitk(path, image_format, check_size)
    return _finish(decoded, max_pixels)


def read_image_bytes(data: bytes, filename_hint: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> MedicalImage:
    """Read an upload held in memory. The hint's extension is kept (it matters for .nii.gz and extension-less
    DICOM); the temporary copy is always deleted."""
    suffix = _safe_suffix(Path(str(filename_hint or "upload")).name)
    with tempfile.TemporaryDirectory(prefix="medanomaly-upload-") as folder:
        temporary = Path(folder) / f"upload{suffix}"
        temporary.write_bytes(bytes(data))
        image = read_image(temporary, max_pixels=max_pixels)
    image.meta["source"] = str(filename_hint)
    return image


def _refuse_truncated_film(path: Path, image_format: str) -> None:
    """A JPEG without its end-of-image marker or a PNG without its IEND chunk was cut short. The decoders fill
    the missing rows with grey instead of failing, which would score half a film as if it were whole."""
    if image_format not in ("jpeg", "png"):
        return
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - 64))
        tail = stream.read()
    if image_format == "jpeg" and b"\xff\xd9" not in tail:
        raise UnsupportedImageError("truncated JPEG: the file ends before its end-of-image marker")
    if image_format == "png" and b"IEND" not in tail:
        raise UnsupportedImageError("truncated PNG: the file ends before its IEND chunk")


def detect_format(path: Path) -> str:
    """Format name from the file's first bytes; raises UnsupportedImageError when it is no image we read."""
    with open(path, "rb") as stream:
        head = stream.read(HEADER_BYTES)
    name = path.name.lower()
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        if _is_nifti_header(_gunzip_head(path)):
            return "nifti"
        raise UnsupportedImageError(f"{path.name} is gzip-compressed but does not hold a NIfTI image")
    if re.search(rb"^\s*(ObjectType|NDims)\s*=", head, re.MULTILINE):
        return "metaimage"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if name.endswith(".dcm") or name.endswith(".dicom"):
        return "dicom-without-preamble"  # old DICOM files start straight with the data set
    raise UnsupportedImageError(
        f"{path.name} is not a recognised image: its content is not PNG, JPEG, BMP, TIFF, DICOM, NIfTI, NRRD "
        f"or MetaImage (extension '{''.join(path.suffixes) or 'none'}')")


def _is_nifti_header(head: bytes) -> bool:
    nifti1 = len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00")
    nifti2 = len(head) >= 12 and head[4:8] in (b"n+2\x00", b"ni2\x00")
    return nifti1 or nifti2


def _gunzip_head(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read(HEADER_BYTES)
    except (OSError, EOFError) as error:
        raise UnsupportedImageError(f"{path.name}: corrupt gzip data ({error})") from error


def _safe_suffix(filename: str) -> str:
    """'.nii.gz', '.dcm', '' ... from an untrusted upload name: letters and digits only, at most two parts."""
    parts = [part for part in filename.lower().split(".")[1:] if re.fullmatch(r"[a-z0-9]{1,8}", part)]
    parts = parts[-2:] if parts and parts[-1] == "gz" else parts[-1:]
    return "".join(f".{part}" for part in parts)


def _check_pixel_budget(shape: tuple, max_pixels: int) -> None:
    count = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if count > max_pixels:
        size = " x ".join(str(int(v)) for v in shape)
        raise UnsupportedImageError(
            f"image too large: {size} = {count:,} pixels, more than the limit of {max_pixels:,} pixels")


def _itk_error(error: Exception) -> str:
    """The useful last line of an ITK exception (the full text is a C++ trace)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _read_with_sitk(path: Path, image_format: str, check_size) -> DecodedPixels:
    notes: list[str] = []
    if image_format == "nifti":
        _check_nifti_header(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(ITK_IMAGE_IO[image_format])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnsupportedImageError(
            f"corrupt or unreadable {image_format.upper()} file {path.name}: {_itk_error(error)}") from error

    size = tuple(reader.GetSize())  # SimpleITK (x, y, z, t) order
    if 0 in size:
        raise UnsupportedImageError(f"zero-size image: size {size} has an empty dimension")
    if len(size) > 3 and any(extent > 1 for extent in size[3:]):
        raise UnsupportedImageError(
            f"{len(size)}D image of size {' x '.join(map(str, size))} (e.g. a time series): "
            "only 2D films and 3D volumes are supported")
    check_size(size[::-1])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise UnsupportedImageError(
            f"corrupt or truncated {image_format.upper()} file {path.name}: {_itk_error(error)}") from error

    if image_format == "nifti":
        _check_nifti_finite(path)  # after the size check: this pass reads every voxel
    if image.GetDimension() > 3:
        image = image[:, :, :, 0]  # the 4th axis has length 1 (checked above)
        notes.append("singleton 4th dimension dropped")
    if image_format in RASTER_FORMATS and image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = image[:, :, 0]  # a one-page TIFF is a film, not a volume

    meta = {"format": image_format, "source": str(path), "modality": None, "body_part": None, "notes": notes}
    return DecodedPixels(
        pixels=sitk.GetArrayViewFromImage(image).copy(),
        has_channels=image.GetNumberOfComponentsPerPixel() > 1,
        spacing=image.GetSpacing(), origin=image.GetOrigin(), direction=image.GetDirection(), meta=meta)


def _check_nifti_header(path: Path) -> None:
    """ITK reports a zero dimension only as 'not NIfTI'; nibabel reads the header alone and can say why.

    ITK's NIfTI reader also turns NaN voxels into 0 without a word, hence `_check_nifti_finite`."""
    try:
        nifti = nibabel.load(str(path))
        shape = nifti.shape
        if 0 in shape:
            raise UnsupportedImageError(f"zero-size image: NIfTI shape {shape} has an empty dimension")
    except UnsupportedImageError:
        raise
    except Exception as error:
        raise UnsupportedImageError(f"corrupt NIfTI file {path.name}: {error}") from error


def _check_nifti_finite(path: Path) -> None:
    nifti = nibabel.load(str(path))
    if nifti.get_data_dtype().kind == "f":
        _check_finite(np.asanyarray(nifti.dataobj))


def _finish(decoded: DecodedPixels, max_pixels: int) -> MedicalImage:
    """The checks every format shares, then float32 C-contiguous pixels."""
    notes = decoded.meta.setdefault("notes", [])
    pixels = decoded.pixels
    if decoded.has_channels:
        pixels = grey_from_channels(pixels, notes)
    if pixels.ndim not in (2, 3):
        raise UnsupportedImageError(
            f"{pixels.ndim}D pixel array of shape {pixels.shape}: only 2D films and 3D volumes are supported")
    if 0 in pixels.shape:
        raise UnsupportedImageError(f"zero-size image: shape {pixels.shape}")
    _check_pixel_budget(pixels.shape, max_pixels)

    array = np.ascontiguousarray(pixels, dtype=np.float32)
    _check_finite(array)
    if len(decoded.spacing) != array.ndim:
        raise UnsupportedImageError(
            f"geometry has {len(decoded.spacing)} dimensions but the pixels have {array.ndim}")
    return MedicalImage(array=array, spacing=decoded.spacing, origin=decoded.origin,
                        direction=decoded.direction, meta=decoded.meta)


def _check_finite(array: np.ndarray) -> None:
    with np.errstate(over="ignore"):  # float64 values beyond float32 become inf: refused like inf
        finite = np.isfinite(array.astype(np.float32, copy=False))
    if not finite.all():
        nan_count = int(np.isnan(array).sum())
        inf_count = int(finite.size - finite.sum()) - nan_count
        raise UnsupportedImageError(
            f"image contains {nan_count} NaN and {inf_count} infinite pixel values (or values too large "
            "for float32)")


def grey_from_channels(pixels: np.ndarray, notes: list) -> np.ndarray:
    """Apply the colour policy (module docstring) to pixels with a trailing channel axis."""
    channels = pixels.shape[-1]
    if channels in (2, 4):
        notes.append("alpha channel dropped")
        pixels = pixels[..., :-1]
        channels -= 1
    if channels == 1:
        return pixels[..., 0]
    if channels != 3:
        raise UnsupportedImageError(f"image has {channels} components per pixel; only greyscale is supported")
    values = pixels.astype(np.float32, copy=False)
    largest_difference = float(max(np.abs(values[..., 0] - values[..., 1]).max(),
                                   np.abs(values[..., 0] - values[..., 2]).max()))
    value_range = float(values.max() - values.min())
    if largest_difference > GREY_TOLERANCE * value_range:
        raise UnsupportedImageError(
            f"colour image: red, green and blue differ by up to {largest_difference:g} (value range "
            f"{value_range:g}); only greyscale images are supported (a colour photo or Doppler ultrasound?)")
    notes.append("grey image stored as RGB converted to one channel")
    return values.mean(axis=-1)
