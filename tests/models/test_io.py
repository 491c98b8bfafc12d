"""Medical image I/O on real files from the shared data folder (read-only; nothing is copied into the repo)."""
from pathlib import Path
from unittest import mock

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medanomaly.errors import UnsupportedImageError
from medanomaly.io import MedicalImage, read_image, read_image_bytes, write_image

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PYDICOM_DATA = DATA / "dicom" / "pydicom_data"
CR_CHEST = PYDICOM_DATA / "RG1_UNCR.dcm"
CR_CHEST_J2K = PYDICOM_DATA / "RG1_J2KI.dcm"
MULTIFRAME_MR = PYDICOM_DATA / "emri_small.dcm"
CT_SLICE = DATA / "dicom" / "pydicom_wheel" / "CT_small.dcm"
SIIM_CR = DATA / "dicom" / "torchxrayvision_tests" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
NIH_PNG = DATA / "dicom" / "torchxrayvision_tests" / "00000001_000.png"
KERMANY_JPEG = sorted((DATA / "kermany_cxr" / "train" / "NORMAL").glob("*.jpeg"))[0]
IXI_T1 = DATA / "nifti" / "ixi_nichart" / "IXI012-HH-1211_T1.nii.gz"
EXAMPLE_4D = DATA / "nifti" / "nibabel_tests" / "example4d.nii.gz"

pytestmark = pytest.mark.skipif(not CR_CHEST.exists(), reason="shared test data not available")


def no_pydicom_decoder():
    """Make pydicom fail to decode, as it does for JPEG lossless or JPEG-LS without a plugin."""
    def refuse(_dataset):
        raise NotImplementedError("no pixel data handler available")
    return mock.patch.object(pydicom.dataset.Dataset, "pixel_array", property(refuse))


# --- DICOM -----------------------------------------------------------------------------------------------------

def test_cr_chest_monochrome1_is_inverted_and_described():
    image = read_image(CR_CHEST)
    header = pydicom.dcmread(CR_CHEST, stop_before_pixels=True)
    assert image.shape == (header.Rows, header.Columns) == (1955, 1841)
    assert image.array.dtype == np.float32 and image.array.flags.c_contiguous
    assert image.meta["modality"] == "CR" and image.meta["body_part"] == "CHEST"
    assert image.meta["photometric"] == "MONOCHROME1" and image.meta["inverted"]
    assert "MONOCHROME1 inverted so that bright = dense" in image.meta["notes"]
    # This file's PixelSpacing is "0.000\0.000": it must be reported, not used
    assert image.spacing == (1.0, 1.0)
    assert any("PixelSpacing" in note for note in image.meta["notes"])

    # Inverted: the result decreases where the stored values increase (window is monotonic, inversion flips it)
    raw = pydicom.dcmread(CR_CHEST).pixel_array.astype(np.float64)
    assert np.corrcoef(raw.ravel()[::97], image.array.ravel()[::97])[0, 1] < -0.99
    # ...so that bright = dense: the mediastinum (central strip) is brighter than the lung fields beside it
    rows = slice(600, 1100)
    mediastinum = image.array[rows, 850:990].mean()
    lungs = (image.array[rows, 450:650].mean() + image.array[rows, 1200:1400].mean()) / 2
    assert mediastinum > lungs


def test_pixel_spacing_is_read_in_x_y_order():
    film = read_image(SIIM_CR)
    assert film.shape == (1024, 1024) and film.spacing == pytest.approx((0.168, 0.168))
    ct = read_image(CT_SLICE)  # a slice placed in patient space: a one-slice volume with its 3D geometry
    assert ct.shape == (1, 128, 128) and ct.meta["modality"] == "CT"
    assert ct.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    assert ct.origin == pytest.approx((-158.135803, -179.035797, -75.699997))
    assert ct.direction == pytest.approx(tuple(np.eye(3).ravel()))
    assert ct.array.min() == pytest.approx(128 - 1024)  # rescale intercept applied: Hounsfield units


def test_multiframe_mr_is_a_volume_with_one_slice_per_frame():
    image = read_image(MULTIFRAME_MR)
    frames = int(pydicom.dcmread(MULTIFRAME_MR, stop_before_pixels=True).NumberOfFrames)
    assert image.shape == (frames, 64, 64) and frames == 10
    assert image.meta["modality"] == "MR" and image.meta["number_of_frames"] == frames
    assert image.spacing[2] == pytest.approx(1.2)  # SpacingBetweenSlices


def test_jpeg2000_film_matches_the_uncompressed_one():
    lossy, plain = read_image(CR_CHEST_J2K), read_image(CR_CHEST)
    assert lossy.shape == plain.shape and lossy.meta["inverted"]
    assert np.corrcoef(lossy.array.ravel()[::31], plain.array.ravel()[::31])[0, 1] > 0.99


@pytest.mark.parametrize("path", [CR_CHEST, CT_SLICE, MULTIFRAME_MR], ids=lambda p: p.name)
def test_gdcm_fallback_gives_the_same_image_as_pydicom(path):
    reference = read_image(path)
    with no_pydicom_decoder():
        fallback = read_image(path)
    assert fallback.meta["pixel_decoder"] == "gdcm"
    assert any("decoded by GDCM" in note for note in fallback.meta["notes"])
    assert fallback.same_geometry(reference)
    np.testing.assert_array_equal(fallback.array, reference.array)


def test_undecodable_dicom_names_the_transfer_syntax(tmp_path):
    broken = tmp_path / "broken.dcm"
    dataset = pydicom.dcmread(CR_CHEST_J2K)
    dataset.PixelData = dataset.PixelData[:2000] + bytes(2000)  # a damaged JPEG 2000 stream
    dataset.save_as(broken)
    with no_pydicom_decoder(), pytest.raises(UnsupportedImageError, match="JPEG 2000"):
        read_image(broken)


def test_colour_ultrasound_and_segmentation_are_refused():
    with pytest.raises(UnsupportedImageError, match="colour image"):
        read_image(PYDICOM_DATA / "US1_UNCR.dcm")
    with pytest.raises(UnsupportedImageError, match="SEG"):
        read_image(PYDICOM_DATA / "liver.dcm")


# --- films -------------------------------------------------------------------------------------------------------

def test_png_and_jpeg_films_are_2d_float32():
    png = read_image(NIH_PNG)
    assert png.shape == (512, 512) and png.array.dtype == np.float32 and png.meta["format"] == "png"
    jpeg = read_image(KERMANY_JPEG)
    assert jpeg.shape == (224, 224) and jpeg.array.dtype == np.float32 and jpeg.meta["format"] == "jpeg"


def test_grey_film_stored_as_rgb_is_converted_and_noted(tmp_path):
    jpeg = read_image(KERMANY_JPEG)  # stored as 3 equal channels
    assert "grey image stored as RGB converted to one channel" in jpeg.meta["notes"]

    grey = read_image(NIH_PNG).array.astype(np.uint8)
    rgb_png = tmp_path / "grey_as_rgb.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True), str(rgb_png))
    converted = read_image(rgb_png)
    np.testing.assert_array_equal(converted.array, grey)
    assert "grey image stored as RGB converted to one channel" in converted.meta["notes"]


def test_format_comes_from_content_not_extension(tmp_path):
    renamed = tmp_path / "film.dat"
    renamed.write_bytes(NIH_PNG.read_bytes())
    assert read_image(renamed).meta["format"] == "png"
    no_extension = tmp_path / "IM0001"
    no_extension.write_bytes(SIIM_CR.read_bytes())
    assert read_image(no_extension).meta["modality"] == "CR"


def test_read_image_bytes_keeps_the_extension_and_cleans_up(tmp_path):
    with mock.patch("tempfile.tempdir", str(tmp_path)):
        image = read_image_bytes(IXI_T1.read_bytes(), "uploads/brain.nii.gz")
        assert image.shape == (90, 120, 120) and image.meta["source"] == "uploads/brain.nii.gz"
        with pytest.raises(UnsupportedImageError, match="empty file"):
            read_image_bytes(b"", "film.png")
    assert list(tmp_path.iterdir()) == []


# --- volumes and writing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_volume_map_round_trip_keeps_geometry_and_values(tmp_path, suffix):
    volume = read_image(IXI_T1)
    assert volume.shape == (90, 120, 120) and volume.spacing == pytest.approx((2.0, 2.0, 2.0))
    anomaly_map = np.random.default_rng(0).random(volume.shape, dtype=np.float32)
    written = write_image(volume, tmp_path / f"map{suffix}", array=anomaly_map)
    back = read_image(written)
    assert back.same_geometry(volume)
    np.testing.assert_array_equal(back.array, anomaly_map)
    assert [p.name for p in tmp_path.iterdir()] == [f"map{suffix}"]  # no temporary file left behind


def test_single_slice_volume_stays_one_slice(tmp_path):
    film = read_image(NIH_PNG)
    as_volume = MedicalImage(array=film.array[np.newaxis], spacing=(0.5, 0.5, 1.0))
    path = write_image(as_volume, tmp_path / "film.nrrd")
    assert read_image(path).shape == (1, 512, 512)
    mask = write_image(as_volume, tmp_path / "mask.nii.gz", array=as_volume.array > 100)
    back = read_image(mask)
    assert back.shape == (1, 512, 512) and set(np.unique(back.array)) <= {0.0, 1.0}


def test_failed_write_leaves_nothing(tmp_path):
    image = read_image(CT_SLICE)
    with pytest.raises(FileNotFoundError):
        write_image(image, tmp_path / "missing_folder" / "map.nrrd")
    with pytest.raises(ValueError, match="array shape"):
        write_image(image, tmp_path / "map.nrrd", array=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="cannot write"):
        write_image(image, tmp_path / "map.png")
    with mock.patch.object(sitk, "WriteImage", side_effect=RuntimeError("disk full")):
        with pytest.raises(OSError, match="disk full"):
            write_image(image, tmp_path / "map.nrrd")
    assert list(tmp_path.iterdir()) == []


# --- bad input -----------------------------------------------------------------------------------------------------

def write_nifti(path, array):
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), str(path))
    return path


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        read_image("/nonexistent/film.png")


@pytest.mark.parametrize("name, content, reason", [
    ("empty.dcm", b"", "empty file"),
    ("random.dcm", bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)), "not a DICOM"),
    ("notes.png", b"this is a text file, not a picture\n" * 20, "not a recognised image"),
    ("fake.nii.gz", b"\x1f\x8b" + b"garbage" * 50, "gzip"),
])
def test_bad_bytes_are_refused_with_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnsupportedImageError, match=reason):
        read_image(path)


def test_truncated_dicom(tmp_path):
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(CR_CHEST.read_bytes()[:5000])
    with pytest.raises(UnsupportedImageError, match="truncated"):
        read_image(truncated)


@pytest.mark.parametrize("bad_value, reason", [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_non_finite_pixels(tmp_path, bad_value, reason):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = bad_value
    with pytest.raises(UnsupportedImageError, match=reason):
        read_image(write_nifti(tmp_path / "bad.nii.gz", array))


def test_4d_is_refused_but_a_singleton_4th_axis_is_not(tmp_path):
    with pytest.raises(UnsupportedImageError, match="4D image of size 128 x 96 x 24 x 2"):
        read_image(EXAMPLE_4D)
    single = read_image(write_nifti(tmp_path / "t1.nii.gz", np.ones((6, 5, 4, 1), np.float32)))
    assert single.shape == (4, 5, 6)


def test_colour_png_is_refused(tmp_path):
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 200  # red film
    colour[8:16, 8:16, 2] = 255
    path = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(path))
    with pytest.raises(UnsupportedImageError, match="colour image"):
        read_image(path)


def test_zero_size_image(tmp_path):
    with pytest.raises(UnsupportedImageError, match="zero-size"):
        read_image(write_nifti(tmp_path / "empty.nii.gz", np.zeros((0, 4, 4), np.float32)))


def test_too_many_pixels_says_the_size():
    with pytest.raises(UnsupportedImageError, match=r"1955 x 1841 = 3,599,155 pixels.*1,000,000"):
        read_image(CR_CHEST, max_pixels=1_000_000)
    with pytest.raises(UnsupportedImageError, match=r"512 x 512 = 262,144 pixels"):
        read_image(NIH_PNG, max_pixels=100_000)


def test_truncated_jpeg_and_png_are_refused(tmp_path):
    jpeg = sorted((DATA / "kermany_cxr" / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    png = sorted((DATA / "nih_cxr14" / "images_512").glob("*.png"))[0].read_bytes()
    for name, data, reason in (("cut.jpeg", jpeg, "truncated JPEG"), ("cut.png", png, "truncated PNG")):
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(UnsupportedImageError, match=reason):
            read_image(cut)
