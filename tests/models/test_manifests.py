"""Manifest reading/writing/loading, and every builder run on the real data sets."""
import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medanomaly.data import BUILDERS, Case, load_case, rasterize_shapes, read_manifest, write_manifest
from medanomaly.data.builders import default_data_root, split_groups
from medanomaly.errors import ManifestError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
if not DATA.exists():
    DATA = default_data_root()
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared data sets not found at {DATA}")
NIH_CLASSES = {"No Finding", "Cardiomegaly", "Pneumothorax", "Effusion"}


def _patients(cases):
    return {c.patient for c in cases}


def _assert_patient_disjoint(*splits):
    for i, first in enumerate(splits):
        for second in splits[i + 1:]:
            assert not (_patients(first) & _patients(second))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every builder run once into a temporary folder: {name: {split: [Case]}}."""
    if not DATA.exists():
        pytest.skip(f"shared data sets not found at {DATA}")
    out = tmp_path_factory.mktemp("manifests")
    result = {}
    for name, build in BUILDERS.items():
        paths = build(DATA, out / name)
        assert all(p.is_file() for p in paths.values())
        result[name] = {split: read_manifest(path) for split, path in paths.items()}
    return result


# ---------------------------------------------------------------------------------------------- CSV logic


def _small_image(folder: Path, name: str, shape=(6, 8)) -> Path:
    path = folder / name
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, dtype=np.uint8)), str(path))
    return path


def test_round_trip(tmp_path):
    image = _small_image(tmp_path, "a.png")
    mask = _small_image(tmp_path, "a_mask.png")
    cases = [
        Case(image=image, label=1, mask=mask, circles=[(3.0, 2.0, 1.5)], boxes=[(1.0, 1.0, 2.0, 3.0), (0, 0, 1, 1)],
             patient="p1", extra={"note": "x"}),
        Case(image=image, label="Cardiomegaly|Effusion", slice=0, roi=mask, patient="p2", extra={"note": ""}),
        Case(image=image, label=0),
    ]
    path = write_manifest(cases, tmp_path / "sub" / "m.csv")
    text = path.read_text(encoding="utf-8")
    assert str(tmp_path) not in text  # paths are relative to the CSV
    assert not list(path.parent.glob(".*tmp"))  # the temporary file was renamed away
    back = read_manifest(path)
    for original, read in zip(cases, back):
        assert read.image == original.image.resolve()
        assert read.label == original.label
        assert read.mask == (original.mask.resolve() if original.mask else None)
        assert read.circles == [tuple(map(float, c)) for c in original.circles]
        assert read.boxes == [tuple(map(float, b)) for b in original.boxes]
        assert (read.slice, read.patient) == (original.slice, original.patient)
    assert back[0].extra == {"note": "x"}
    assert [c.is_abnormal for c in back] == [True, True, False]


def test_write_accepts_dict_rows(tmp_path):
    image = _small_image(tmp_path, "a.png")
    write_manifest([{"image": image, "label": 0, "circle": [(1, 2, 3)], "site": "A"}], tmp_path / "m.csv")
    (case,) = read_manifest(tmp_path / "m.csv")
    assert case.circles == [(1.0, 2.0, 3.0)] and case.extra == {"site": "A"}


@pytest.mark.parametrize("label, abnormal", [
    (0, False), ("0", False), ("normal", False), ("No Finding", False), ("no finding", False),
    (1, True), ("1", True), ("abnormal", True), ("pneumonia", True), ("Cardiomegaly", True),
    ("No Finding|Effusion", True),
])
def test_is_abnormal(label, abnormal):
    assert Case(image=Path("x.png"), label=label).is_abnormal is abnormal


def _write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join((header,) + rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("header, row, problem", [
    ("image", "a.png", "label"),
    ("image,label", "missing.png,0", "does not exist"),
    ("image,label,circle", "a.png,1,\"3,4\"", "circle"),
    ("image,label,circle", "a.png,1,\"a,b,c\"", "circle"),
    ("image,label,circle", "a.png,1,\"3,4,-1\"", "radius"),
    ("image,label,box", "a.png,1,\"1,2,3\"", "box"),
    ("image,label,slice", "a.png,1,two", "slice"),
    ("image,label", "a.png,", "label"),
])
def test_malformed_manifest_raises(tmp_path, header, row, problem):
    _small_image(tmp_path, "a.png")
    path = _write_csv(tmp_path / "m.csv", header, row)
    with pytest.raises(ManifestError, match=problem):
        read_manifest(path)


def test_error_names_the_row(tmp_path):
    _small_image(tmp_path, "a.png")
    path = _write_csv(tmp_path / "m.csv", "image,label,circle", "a.png,0,", "a.png,1,\"1,2\"")
    with pytest.raises(ManifestError, match="row 2"):
        read_manifest(path)


def test_rasterize_shapes():
    mask = rasterize_shapes((10, 12), circles=[(3, 4, 1)], boxes=[(8, 0, 2, 3)])
    assert mask.dtype == np.uint8 and mask.shape == (10, 12)
    assert mask[4, 3] == 1 and mask[4, 4] == 1 and mask[3, 3] == 1 and mask[5, 5] == 0  # (row, column)
    assert mask[0:3, 8:10].all() and mask[3, 8] == 0 and mask[0, 10] == 0
    assert mask.sum() == 5 + 6
    assert rasterize_shapes((4, 4), boxes=[(2, 2, 10, 10)]).sum() == 4  # clipped to the image


def test_split_groups_is_stable_and_exact():
    strata = {"a": [f"p{i}" for i in range(50)], "b": [f"q{i}" for i in range(10)]}
    split = split_groups(strata, {"val": 0.2, "test": 0.1}, seed=0)
    assert split == split_groups({"b": strata["b"][::-1], "a": strata["a"][::-1]}, {"val": 0.2, "test": 0.1})
    assert sum(v == "val" for v in split.values()) == 10 + 2
    assert sum(v == "test" for v in split.values()) == 5 + 1


def test_load_case_slice_geometry(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.5, 0.7, 2.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(image, str(tmp_path / "v.nii.gz"))
    labels = np.zeros_like(volume, dtype=np.uint8)
    labels[2, 1, 1] = 3
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "l.nii.gz"))
    loaded = load_case(Case(image=tmp_path / "v.nii.gz", label=1, mask=tmp_path / "l.nii.gz", slice=2,
                            roi=tmp_path / "l.nii.gz"))
    assert loaded.image.shape == (5, 6)
    np.testing.assert_array_equal(loaded.image.array, volume[2])
    assert loaded.image.spacing == pytest.approx((0.5, 0.7))
    physical = image.TransformIndexToPhysicalPoint((0, 0, 2))
    assert loaded.image.origin == pytest.approx(physical[:2])
    assert loaded.image.meta["slice_origin_3d"] == pytest.approx(physical)
    assert loaded.mask.sum() == 1 and loaded.mask[1, 1] == 1 and loaded.roi.dtype == bool
    with pytest.raises(ManifestError, match="outside"):
        load_case(Case(image=tmp_path / "v.nii.gz", label=0, slice=4))


# ---------------------------------------------------------------------------------------------- builders


@needs_data
def test_builder_reports_missing_source(tmp_path):
    for build in BUILDERS.values():
        with pytest.raises(ManifestError, match="missing"):
            build(tmp_path / "nowhere", tmp_path / "out")


@needs_data
def test_kermany(built, tmp_path):
    train, val, train_all = (built["kermany"][s] for s in ("train", "val", "train_all"))
    assert len(train) > 800 and all(not c.is_abnormal for c in train)
    assert {c.label for c in val} == {0, 1} and {c.label for c in train_all} == {0, 1}
    assert 800 < len(val) < 1300 and len(train_all) + len(val) == 5216
    _assert_patient_disjoint(train_all, val)
    assert _patients(train) <= _patients(train_all)

    capped = BUILDERS["kermany"](DATA, tmp_path, max_per_class=10)
    again = BUILDERS["kermany"](DATA, tmp_path / "again", max_per_class=10)  # must choose the same films
    for split in capped:
        cases = read_manifest(capped[split])
        assert max(sum(c.label == k for c in cases) for k in (0, 1)) == 10
        assert [(c.image, c.label) for c in cases] == [(c.image, c.label) for c in read_manifest(again[split])]


@needs_data
def test_mini_mias(built):
    splits = built["mini_mias"]
    assert set(splits) == {"train", "val", "test"}
    assert len(splits["train"]) > 50 and all(not c.is_abnormal for c in splits["train"])
    _assert_patient_disjoint(*splits.values())
    held_out = splits["val"] + splits["test"]
    assert sum(c.is_abnormal for c in held_out) > 20
    assert all(not c.circles for c in held_out if not c.is_abnormal)

    annotations = list(csv.DictReader(open(DATA / "mini_mias" / "annotations.csv", encoding="utf-8")))
    by_ref = {a["refnum"]: a for a in annotations}
    with_circle = [c for c in held_out if c.circles]
    for case in with_circle[:3]:
        a = by_ref[case.image.stem]
        mask = rasterize_shapes((1024, 1024), case.circles)
        assert mask[int(a["y_top_origin"]), int(a["x"])] == 1
    # mdb001: x=535, y_top=599, r=197; the circle's centre row counts from the top.
    mask = rasterize_shapes((1024, 1024), [(535, 599, 197)])
    assert mask[599, 535] == 1 and mask[599 - 196, 535] == 1 and mask[599 + 198, 535] == 0

    loaded = load_case(with_circle[0])
    assert loaded.image.shape == (1024, 1024) == loaded.mask.shape and loaded.mask.any()
    no_coordinates = [c for c in held_out if c.is_abnormal and not c.circles]
    for case in no_coordinates:  # e.g. ARCH/ASYM: abnormal, but no outline
        assert case.label == 1


@needs_data
def test_nih(built):
    train, val = built["nih"]["train"], built["nih"]["val"]
    assert len(train) > 80 and len(val) > 30
    assert all(c.label in NIH_CLASSES for c in train)
    assert {c.label for c in train} == NIH_CLASSES
    assert all(set(c.label_names) <= NIH_CLASSES for c in val)
    assert any(len(c.label_names) > 1 for c in val)
    _assert_patient_disjoint(train, val)
    boxed = [c for c in val if c.boxes]
    assert boxed
    loaded = load_case(boxed[0])
    assert loaded.image.shape == (512, 512) == loaded.mask.shape and loaded.mask.any()


@needs_data
def test_brats(built):
    train, val = built["brats"]["train"], built["brats"]["val"]
    assert len(train) > 50 and len(val) > 100
    assert all(c.label == 0 for c in train) and {c.label for c in val} == {0, 1}
    _assert_patient_disjoint(train, val)
    for case in (train[0], train[len(train) // 2], train[-1]):
        loaded = load_case(case)
        assert loaded.image.shape == (240, 240) == loaded.mask.shape == loaded.roi.shape
        assert loaded.mask.sum() == 0 and loaded.roi.mean() >= 0.05
    tumour = load_case(next(c for c in val if c.label == 1))
    assert tumour.mask.any() and tumour.is_abnormal


@needs_data
def test_dicom_samples(built):
    cases = built["dicom_samples"]["test"]
    by_name = {c.image.name: c for c in cases}
    assert "liver.dcm" not in by_name  # a segmentation object, not an image
    assert by_name["RG1_UNCR.dcm"].label == 0 and by_name["RG1_UNCR.dcm"].extra["modality"] == "CR"
    assert by_name["RG3_J2KR.dcm"].label == 1  # CR, but an extremity
    for name in ("693_UNCR.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm", "CT_small.dcm"):
        assert by_name[name].label == 1
    assert any(c.image.name.endswith(".nii.gz") and c.label == 1 for c in cases)
