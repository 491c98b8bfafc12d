"""Preprocessing functions on real films: percentile scaling, aspect-keeping resize, median normalisation,
tissue masks, patch grids and stitching."""
import numpy as np
import pytest

from medanomaly.inferers.patches import extract_patches, grid_corners, stitch_patch_values, stitch_patches
from medanomaly.io import read_image
from medanomaly.preprocess import (foreground_mask, normalise_by_median, resize_keep_aspect, to_unit_range,
                                   undo_resize)


@pytest.fixture(scope="module")
def cr_film(data_root):
    return read_image(data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm").array  # 1955 x 1841, not square


@pytest.fixture(scope="module")
def mammogram(data_root):
    return read_image(data_root / "mini_mias" / "images" / "mdb001.png").array


def test_unit_range_clips_at_the_percentiles(cr_film):
    scaled, (low, high) = to_unit_range(cr_film, 1, 99)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert low == pytest.approx(np.percentile(cr_film, 1)) and high == pytest.approx(np.percentile(cr_film, 99))
    assert np.mean(scaled == 1.0) == pytest.approx(0.01, abs=0.01)  # the top 1 % saturates, no more


def test_unit_range_of_a_constant_image_is_zero():
    scaled, _ = to_unit_range(np.full((8, 8), 7.0))
    assert not scaled.any()


def test_resize_keeps_the_aspect_ratio_and_pads_with_the_minimum(cr_film):
    square, info = resize_keep_aspect(cr_film, 160)
    assert square.shape == (160, 160)
    height, width = info.resized_shape
    assert height == 160 and width == round(160 * 1841 / 1955)
    assert abs(width / height - 1841 / 1955) < 0.01
    left_pad = square[:, : info.offset[1]]
    assert left_pad.size > 0 and np.all(left_pad == cr_film.min())
    restored = undo_resize(square, info)
    assert restored.shape == cr_film.shape
    # Down and up again keeps the film's large-scale content.
    assert np.corrcoef(restored[::8, ::8].ravel(), cr_film[::8, ::8].ravel())[0, 1] > 0.95


def test_normalise_by_median_puts_the_median_inside_the_mask_at_one(mammogram):
    mask = foreground_mask(mammogram)
    normalised = normalise_by_median(mammogram + 1.0, mask)
    assert np.median(normalised[mask]) == pytest.approx(1.0)
    assert not normalised[~mask].any()
    with pytest.raises(ValueError):
        normalise_by_median(mammogram, np.zeros_like(mask))


def test_foreground_mask_finds_the_breast(mammogram):
    mask = foreground_mask(mammogram)
    fraction = mask.mean()
    assert 0.1 < fraction < 0.8  # a breast, not the whole film nor a speck
    assert mammogram[mask].mean() > 3 * mammogram[~mask].mean()


def test_grid_covers_the_border():
    corners = grid_corners((256, 256), 32, 20)
    rows = sorted({r for r, _ in corners})
    assert rows[0] == 0 and rows[-1] == 256 - 32
    assert len(corners) == len(rows) ** 2


def test_patches_respect_the_minimum_tissue_fraction(mammogram):
    tissue = foreground_mask(mammogram)
    patches = extract_patches(mammogram, 320, 160, tissue, min_foreground_fraction=0.4)
    assert 0 < len(patches.corners) < len(grid_corners(mammogram.shape, 320, 160))
    for (row, col), patch in zip(patches.corners, patches.arrays):
        assert tissue[row:row + 320, col:col + 320].mean() >= 0.4
        assert np.array_equal(patch, mammogram[row:row + 320, col:col + 320])


def test_stitching_averages_overlaps_and_restores_the_full_size(mammogram):
    patches = extract_patches(mammogram, 320, 160)
    stitched = stitch_patches(patches.arrays, patches.corners, mammogram.shape)
    assert stitched.shape == mammogram.shape
    np.testing.assert_allclose(stitched, mammogram, rtol=1e-5)  # identical patches average to the image

    values = np.arange(len(patches.corners), dtype=float)
    painted = stitch_patch_values(values, patches.corners, 320, mammogram.shape)
    r0, c0 = patches.corners[0]
    assert painted[0, 0] == 0.0  # only the first patch covers the corner pixel
    overlap = [v for v, (r, c) in zip(values, patches.corners) if r <= 200 < r + 320 and c <= 200 < c + 320]
    assert painted[200, 200] == pytest.approx(np.mean(overlap))
