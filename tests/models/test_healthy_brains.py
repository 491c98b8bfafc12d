"""The healthy-brain manifests: IXI T1 volumes and the MNI152 template reoriented to BraTS's axes, resampled to
1 mm and skull-stripped, to train on; BraTS T1c cases to tune and test on, never to train on."""
from __future__ import annotations

import numpy as np
import pytest

from medanomaly.brain import prepare_brain_slice
from medanomaly.data.builders import BUILDERS
from medanomaly.data.manifest import load_case, read_manifest
from medanomaly.io import read_image


@pytest.fixture(scope="module")
def manifests(data_root, tmp_path_factory):
    paths = BUILDERS["healthy_brains"](data_root, tmp_path_factory.mktemp("healthy"))
    return {split: read_manifest(path) for split, path in paths.items()}


def test_train_is_healthy_brains_and_brats_is_only_tuned_and_tested_on(manifests):
    train, val, test = manifests["train"], manifests["val"], manifests["test"]
    assert {case.patient for case in train} == {"IXI012-HH-1211", "IXI015-HH-1258", "MNI152_2009a"}
    assert not any(case.is_abnormal for case in train) and all(case.roi is not None for case in train)
    assert all("brats" in case.patient for case in val + test) and any(case.is_abnormal for case in test)
    assert {c.patient for c in val}.isdisjoint({c.patient for c in test})
    assert all("T1c" in case.image.name for case in val + test)


def test_ixi_is_axial_at_1mm_with_a_plausible_brain_mask(manifests):
    case = next(c for c in manifests["train"] if c.patient == "IXI012-HH-1211")
    volume, brain = read_image(case.image), read_image(case.roi).array > 0
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert brain.shape == volume.shape
    # One adult brain, 1.0 to 1.7 litres (1 mm voxels), within the head and far smaller than it.
    assert 1.0e6 < brain.sum() < 1.7e6
    head = volume.array > np.percentile(volume.array, 60)
    assert brain.sum() < 0.8 * head.sum() or brain.sum() < 0.5 * brain.size
    # Axial slices (numpy axis 0): the brain's largest cross-section lies in the middle third of the slices.
    area = brain.reshape(len(brain), -1).sum(axis=1)
    assert len(brain) / 3 < int(np.argmax(area)) < 2 * len(brain) / 3 + 20


def test_ixi_and_brats_slices_land_on_one_intensity_scale(manifests):
    """Percentile scaling inside the brain: the median tissue is 1 and CSF near 0 on a raw IXI T1 and a z-scored
    BraTS T1c alike, although their raw units differ by orders of magnitude."""
    ixi = load_case(next(c for c in manifests["train"] if c.patient == "IXI012-HH-1211" and c.extra["brain_fraction"]
                         and float(c.extra["brain_fraction"]) > 0.2))
    brats = load_case(next(c for c in manifests["test"] if not c.is_abnormal and float(c.extra["brain_fraction"]) > 0.2))
    medians = []
    for item in (ixi, brats):
        prepared = prepare_brain_slice(item.image.array, 128, item.roi, intensity="percentile", crop=True)
        inside = prepared.square[prepared.square_mask]
        medians.append(np.median(inside))
        assert np.percentile(inside, 1) == pytest.approx(0.0, abs=0.2)  # after the area resize
        # Cropped to the brain: it fills the square along its longer side.
        rows, cols = prepared.square_mask.any(axis=1), prepared.square_mask.any(axis=0)
        assert max(rows.sum(), cols.sum()) > 0.85 * 128
    assert medians == pytest.approx([1.0, 1.0], abs=0.08)
    assert abs(float(ixi.image.array.max()) - float(brats.image.array.max())) > 100  # raw units differ
