"""DICOM decoding: pixels through pydicom (SimpleITK/GDCM when pydicom has no decoder), header logic through pydicom.

What the header logic does, in order, so that every film looks the same whatever the scanner wrote:
1. Modality LUT (RescaleSlope/RescaleIntercept or a Modality LUT Sequence): stored values -> HU / modality units.
2. VOI LUT or the first window (WindowCenter/WindowWidth) when the header has one: the display the radiologist saw.
3. MONOCHROME1 (bright = low value) is inverted so that bright = dense in every image we return.
Colour data (RGB, YBR, PALETTE COLOR) is handed back with a trailing channel axis; `reader` then applies the
grey-or-refuse colour rule shared with PNG/JPEG.

Geometry: a film (CR/DX/MG: no ImagePositionPatient) is 2D with PixelSpacing, else ImagerPixelSpacing.
A slice placed in patient space (CT/MR single slice with position and orientation) is a one-slice volume
(1, H, W) so that a map written back overlays it in 3D; a multi-frame file is a (frames, H, W) volume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space

from ..errors import UnsupportedImageError

# DICOM objects that carry no picture of the patient, even when they hold pixel data (a SEG holds label frames).
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "SR", "PR", "KO", "REG", "DOC"}


class DecodedPixels(NamedTuple):
    """What a decoder hands to `reader`: pixels (channels last when `has_channels`) plus geometry and meta."""

    pixels: np.ndarray
    has_channels: bool
    spacing: tuple
    origin: tuple
    direction: tuple
    meta: dict


def read_dicom(path: Path, check_size: Callable[[tuple], None], force: bool = False) -> DecodedPixels:
    """Decode one DICOM file. `check_size(shape)` is called before any pixel is decoded (refuses huge files).

    `force` reads a file without the 128-byte preamble and DICM marker (old files named .dcm)."""
    dataset = _read_dataset(path, force)
    _refuse_non_images(dataset)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if 0 in (rows, columns, frames):
        raise UnsupportedImageError(f"zero-size DICOM image: {frames} frame(s) of {rows} x {columns} pixels")
    check_size((frames, rows, columns) if frames > 1 else (rows, columns))
    _refuse_truncated(dataset, frames, rows, columns)

    notes: list[str] = []
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    stored, decoder = _decode_stored_values(dataset, path, frames, notes)
    if samples == 1 and photometric == "PALETTE COLOR":
        pixels, has_channels = apply_color_lut(stored, dataset), True
        notes.append("PALETTE COLOR expanded to RGB")
    elif samples == 1:
        pixels, has_channels = _grey_display_values(dataset, stored, photometric, notes), False
    else:
        pixels, has_channels = _rgb_values(stored, photometric, notes), True

    spacing, origin, direction = _geometry(dataset, frames, notes)
    if len(spacing) == 3 and frames == 1:
        pixels = pixels[np.newaxis]  # a slice placed in patient space: a one-slice volume
    meta = _meta(dataset, path, photometric, frames, decoder, notes)
    return DecodedPixels(pixels, has_channels, spacing, origin, direction, meta)


def _read_dataset(path: Path, force: bool) -> pydicom.Dataset:
    try:
        dataset = pydicom.dcmread(str(path), force=force)
    except InvalidDicomError as error:
        raise UnsupportedImageError(f"not a valid DICOM file: {error}") from error
    except Exception as error:  # pydicom raises EOFError, struct.error, ValueError... on broken files
        raise UnsupportedImageError(
            f"corrupt or truncated DICOM file ({type(error).__name__}: {error})") from error
    if force and not ("PixelData" in dataset and "Rows" in dataset and "Columns" in dataset):
        # pydicom with force=True "reads" any bytes; without image elements it was not DICOM at all
        raise UnsupportedImageError("not a DICOM file: no DICM marker and no readable image header")
    return dataset


def _refuse_non_images(dataset: pydicom.Dataset) -> None:
    modality = str(dataset.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES:
        raise UnsupportedImageError(f"DICOM {modality} object is not an image of the patient (modality {modality})")
    if not any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop_class = dataset.get("SOPClassUID", "unknown SOP class")
        name = getattr(sop_class, "name", sop_class)
        raise UnsupportedImageError(f"DICOM file has no pixel data ({name}); it may be cut short or not an image")


def _transfer_syntax(dataset: pydicom.Dataset):
    return getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)


def _refuse_truncated(dataset: pydicom.Dataset, frames: int, rows: int, columns: int) -> None:
    """Uncompressed pixel data shorter than the header promises means the file was cut short."""
    syntax = _transfer_syntax(dataset)
    if syntax is None or syntax.is_compressed or "PixelData" not in dataset:
        return
    bits = int(dataset.get("BitsAllocated", 16) or 16)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    expected = (frames * rows * columns * samples * bits + 7) // 8
    actual = len(dataset.PixelData)
    if actual < expected:
        raise UnsupportedImageError(
            f"truncated DICOM file: pixel data holds {actual} of the {expected} bytes the header promises")


def _decode_stored_values(dataset, path, frames, notes) -> tuple[np.ndarray, str]:
    """Stored values as pydicom gives them: (H, W[, C]) or (frames, H, W[, C])."""
    try:
        return dataset.pixel_array, "pydicom"
    except Exception as pydicom_error:
        syntax = _transfer_syntax(dataset)
        syntax_text = f"{getattr(syntax, 'name', syntax)} ({syntax})" if syntax else "unknown transfer syntax"
        try:
            stored = _decode_with_gdcm(dataset, path, frames)
        except Exception as gdcm_error:
            raise UnsupportedImageError(
                f"cannot decode DICOM pixel data in transfer syntax {syntax_text}: pydicom said "
                f"'{pydicom_error}', GDCM said '{str(gdcm_error).strip().splitlines()[-1]}'") from gdcm_error
        notes.append(f"pixel data ({syntax_text}) decoded by GDCM because pydicom could not")
        return stored, "gdcm"


def _decode_with_gdcm(dataset, path, frames) -> np.ndarray:
    """GDCM (through SimpleITK) for compressions pydicom cannot decode here (JPEG lossless, JPEG-LS...).

    ITK hands back rescaled values and inverts MONOCHROME1; both are undone so that exactly the same header
    logic runs whichever library decoded the pixels (a test checks this against the pydicom path)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    pixels = sitk.GetArrayFromImage(reader.Execute())  # (frames, H, W[, C]); frames is 1 for a single image
    if frames == 1:
        pixels = pixels[0]
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        return pixels
    if str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        pixels = (2 ** int(dataset.BitsStored) - 1) - pixels.astype(np.float64)
    slope, intercept = float(dataset.get("RescaleSlope", 1) or 1), float(dataset.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        pixels = np.rint((pixels.astype(np.float64) - intercept) / slope)
    return pixels


def _shared_group_item(dataset, sequence_keyword: str):
    """First item of a functional group of an enhanced multi-frame file (shared, else frame 1), or None."""
    for groups_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = dataset.get(groups_keyword)
        if groups and sequence_keyword in groups[0] and len(groups[0][sequence_keyword].value):
            return groups[0][sequence_keyword][0]
    return None


def _grey_display_values(dataset, stored: np.ndarray, photometric: str, notes: list) -> np.ndarray:
    values = apply_modality_lut(stored, dataset)
    if "ModalityLUTSequence" in dataset:
        notes.append("Modality LUT applied")
    elif "RescaleSlope" in dataset or "RescaleIntercept" in dataset:
        slope, intercept = float(dataset.get("RescaleSlope", 1)), float(dataset.get("RescaleIntercept", 0))
        if (slope, intercept) != (1.0, 0.0):
            notes.append(f"rescale slope {slope:g} intercept {intercept:g} applied")
    else:
        transform = _shared_group_item(dataset, "PixelValueTransformationSequence")
        if transform is not None and "RescaleSlope" in transform:
            slope, intercept = float(transform.RescaleSlope), float(transform.get("RescaleIntercept", 0))
            values = stored.astype(np.float64) * slope + intercept
            notes.append(f"rescale slope {slope:g} intercept {intercept:g} (functional group) applied")

    if "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset, index=0)
        notes.append("VOI LUT applied")
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        values = apply_voi_lut(values, dataset, index=0)
        center, width = _first_value(dataset.WindowCenter), _first_value(dataset.WindowWidth)
        notes.append(f"window centre {center:g} width {width:g} applied")

    if photometric == "MONOCHROME1":
        # Reflect within the image's own range: the mapping stays affine (max + min - value) so contrast is kept
        values = np.asarray(values, dtype=np.float64)
        values = values.max() + values.min() - values
        notes.append("MONOCHROME1 inverted so that bright = dense")
    return values


def _first_value(value) -> float:
    return float(value[0]) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else float(value)


def _rgb_values(stored: np.ndarray, photometric: str, notes: list) -> np.ndarray:
    """RGB for the colour rule. YBR is converted unless the decoder already did (then the channels are equal)."""
    if photometric.startswith("YBR") and not _channels_nearly_equal(stored):
        stored = convert_color_space(stored, photometric, "RGB")
        notes.append(f"{photometric} converted to RGB")
    return stored


def _channels_nearly_equal(pixels: np.ndarray) -> bool:
    first = pixels[..., :1].astype(np.int32)
    return int(np.abs(pixels.astype(np.int32) - first).max()) <= 2


def _pixel_spacing(dataset, notes: list) -> tuple[float, float]:
    """(x, y) spacing in mm; DICOM stores (row spacing, column spacing) = (y, x)."""
    measures = _shared_group_item(dataset, "PixelMeasuresSequence")
    candidates = [("PixelSpacing", dataset.get("PixelSpacing")),
                  ("PixelSpacing", measures.get("PixelSpacing") if measures is not None else None),
                  ("ImagerPixelSpacing", dataset.get("ImagerPixelSpacing"))]
    for keyword, value in candidates:
        if value is None or len(value) != 2:
            continue
        row_spacing, column_spacing = (float(v) for v in value)
        if row_spacing > 0 and column_spacing > 0:
            if keyword == "ImagerPixelSpacing":
                notes.append("spacing from ImagerPixelSpacing (at the detector, not corrected for magnification)")
            return column_spacing, row_spacing
        notes.append(f"{keyword} {list(value)} in the header is not usable")
    notes.append("no usable pixel spacing in the header: 1 mm assumed")
    return 1.0, 1.0


def _geometry(dataset, frames: int, notes: list) -> tuple[tuple, tuple, tuple]:
    column_step, row_step = _pixel_spacing(dataset, notes)
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None:
        plane = _shared_group_item(dataset, "PlaneOrientationSequence")
        orientation = plane.get("ImageOrientationPatient") if plane is not None else None
    positions = _frame_positions(dataset, frames)

    if frames == 1 and (orientation is None or not positions):
        return (column_step, row_step), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)  # a film

    row_direction, column_direction = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    if orientation is not None and len(orientation) == 6:
        row_direction, column_direction = (np.array([float(v) for v in orientation[i:i + 3]]) for i in (0, 3))
    slice_direction = np.cross(row_direction, column_direction)
    slice_step = None
    if len(positions) >= 2:
        step = np.array(positions[1]) - np.array(positions[0])
        if np.linalg.norm(step) > 0:
            slice_step, slice_direction = float(np.linalg.norm(step)), step / np.linalg.norm(step)
    if slice_step is None:
        slice_step = _nominal_slice_step(dataset, frames, notes)
    origin = tuple(positions[0]) if positions else (0.0, 0.0, 0.0)
    # SimpleITK's direction matrix holds the axis directions as columns, flattened row by row
    direction = np.column_stack([row_direction, column_direction, slice_direction]).ravel()
    return (column_step, row_step, slice_step), origin, tuple(direction.tolist())


def _nominal_slice_step(dataset, frames: int, notes: list) -> float:
    measures = _shared_group_item(dataset, "PixelMeasuresSequence")
    for source in (dataset, measures):
        if source is None:
            continue
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = source.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value)
    if frames > 1:
        notes.append("no slice spacing in the header: 1 mm assumed")
    return 1.0


def _frame_positions(dataset, frames: int) -> list[tuple]:
    """ImagePositionPatient of each frame (enhanced multi-frame) or of the single image; [] when absent."""
    if "ImagePositionPatient" in dataset and frames == 1:
        return [tuple(float(v) for v in dataset.ImagePositionPatient)]
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    positions = []
    for item in (per_frame or [])[:2]:  # two frames give the slice step
        plane = item.get("PlanePositionSequence")
        if plane and "ImagePositionPatient" in plane[0]:
            positions.append(tuple(float(v) for v in plane[0].ImagePositionPatient))
    if not positions and "ImagePositionPatient" in dataset:
        positions = [tuple(float(v) for v in dataset.ImagePositionPatient)]
    return positions


def _meta(dataset, path, photometric: str, frames: int, decoder: str, notes: list) -> dict:
    """Technical basics only: no patient, operator or manufacturer fields."""
    syntax = _transfer_syntax(dataset)

    def text(keyword):
        value = dataset.get(keyword)
        return str(value).strip() if value not in (None, "") else None

    return {
        "format": "dicom",
        "source": str(path),
        "modality": text("Modality"),
        "body_part": text("BodyPartExamined"),
        "view_position": text("ViewPosition"),
        "photometric": photometric,
        "inverted": photometric == "MONOCHROME1",
        "number_of_frames": frames,
        "bits_stored": int(dataset.get("BitsStored", 0) or 0),
        "transfer_syntax": str(syntax) if syntax else None,
        "pixel_decoder": decoder,
        "sop_class_uid": text("SOPClassUID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "series_instance_uid": text("SeriesInstanceUID"),
        "sop_instance_uid": text("SOPInstanceUID"),
        "notes": notes,
    }
