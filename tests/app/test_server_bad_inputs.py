"""A corpus of bad requests against the real server: each is answered with a 4xx and a message that says what
was wrong, the server keeps serving, and neither the datastore nor the server's work folders keep stray files.

A 16-bit grey film is not bad input: it is a valid film and must be scored (checked at the end)."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from PIL import Image
from monailabel_server import REPO, fill_studies, http_json, publish_quick_model, running_server

FILM_ID = "kermany-normal-IM-0115-0001"
SAMPLE = REPO / "sample_data" / "chest"


@pytest.fixture(scope="module")
def server(tmp_path_factory, kermany_films):
    root = tmp_path_factory.mktemp("bad")
    studies = fill_studies(root / "studies", sorted(SAMPLE.glob("kermany-normal-*.jpeg"))[:3])
    publish_quick_model(root / "models", kermany_films["NORMAL"][:4], "ae", epochs=1)
    with running_server(studies, conf={"model_dir": root / "models"}) as url:
        yield {"url": url, "studies": studies, "work": root / "models" / ".work", "files": root / "files"}


def corpus(folder: Path, data_root: Path) -> dict[str, Path]:
    """Bad files, each made from a real one where that makes sense."""
    folder.mkdir(exist_ok=True)
    dicom = data_root / "dicom" / "pydicom_data"
    cr = (dicom / "RG1_UNCR.dcm").read_bytes()
    jpeg = (SAMPLE / f"{FILM_ID}.jpeg").read_bytes()
    png = next(SAMPLE.glob("nih-*.png")).read_bytes()
    files = {
        "empty.dcm": b"",
        "header_only.dcm": cr[:3000],
        "pixels_cut.dcm": cr[: len(cr) // 2],
        "garbage_after_preamble.dcm": b"\0" * 128 + b"DICM" + os.urandom(4000),
        "random.png": os.urandom(5000),
        "cut.png": png[: len(png) // 2],
        "cut.jpeg": jpeg[: len(jpeg) // 3],
        "text.nii": b"this is not an image\n" * 50,
        "gzipped_text.nii.gz": gzip.compress(b"not a nifti" * 100),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    film = np.asarray(Image.open(SAMPLE / f"{FILM_ID}.jpeg").convert("L"), dtype=np.float32)
    nan = film.copy()
    nan[10:20, 10:20] = np.nan
    nib.save(nib.Nifti1Image(nan[..., None], np.eye(4)), folder / "nan.nii.gz")
    inf = film.copy()
    inf[5, 5] = np.inf
    nib.save(nib.Nifti1Image(inf[..., None], np.eye(4)), folder / "inf.nii.gz")
    rgb = np.stack([film, np.flipud(film), np.zeros_like(film)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "colour.png")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4, 3), np.float32), np.eye(4)), folder / "four_d.nii.gz")
    Image.fromarray(np.zeros((10000, 10000), np.uint8)).save(folder / "huge_10000.png")
    for name in ("MR2_UNCR.dcm", "693_UNCR.dcm", "US1_UNCR.dcm", "liver.dcm"):
        (folder / name).write_bytes((dicom / name).read_bytes())
    grey16 = (np.asarray(film) * 250).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    return {path.name: path for path in folder.iterdir()}


BAD_UPLOADS = [  # (file, expected status): scored with POST /infer/ae
    ("empty.dcm", 422), ("header_only.dcm", 422), ("pixels_cut.dcm", 422), ("garbage_after_preamble.dcm", 422),
    ("random.png", 422), ("cut.png", 422), ("cut.jpeg", 422), ("text.nii", 422), ("gzipped_text.nii.gz", 422),
    ("nan.nii.gz", 422), ("inf.nii.gz", 422), ("colour.png", 422), ("four_d.nii.gz", 422), ("huge_10000.png", 422),
    ("MR2_UNCR.dcm", 422),  # MR on a film model: the modality screen
    ("693_UNCR.dcm", 422),  # CT
    ("US1_UNCR.dcm", 422),  # colour ultrasound
    ("liver.dcm", 422),  # a DICOM SEG object, not an image
]

VALID_IMAGES_WRONG_MODEL = {"MR2_UNCR.dcm", "693_UNCR.dcm"}

BAD_REQUESTS = [  # (name, method, path, request keyword arguments, expected status)
    ("traversal id", "post", "/infer/ae?image=../../etc/passwd", {}, 400),
    ("absolute path id", "post", "/infer/ae?image=/etc/passwd", {}, 400),
    ("encoded traversal id", "post", "/infer/ae?image=..%2F..%2Fetc%2Fpasswd", {}, 400),
    ("unknown image id", "post", "/infer/ae?image=no-such-image", {}, 404),
    ("unknown model", "post", f"/infer/no-such-model?image={FILM_ID}", {}, 404),
    ("params not JSON", "post", f"/infer/ae?image={FILM_ID}", {"data": {"params": "{not json"}}, 400),
    ("params a list", "post", f"/infer/ae?image={FILM_ID}", {"data": {"params": "[1, 2]"}}, 400),
    ("unknown param", "post", f"/infer/ae?image={FILM_ID}", {"data": {"params": '{"repeats_typo": 3}'}}, 400),
    ("threshold a word", "post", f"/infer/ae?image={FILM_ID}", {"data": {"params": '{"threshold": "high"}'}}, 400),
    ("threshold NaN", "post", f"/infer/ae?image={FILM_ID}", {"data": {"params": '{"threshold": NaN}'}}, 400),
    ("label format", "post", f"/infer/ae?image={FILM_ID}", {"data": {"params": '{"label_format": "exe"}'}}, 400),
    ("no image at all", "post", "/infer/ae", {}, 400),
    ("sessions", "post", f"/infer/ae?image={FILM_ID}&session_id=abc", {}, 400),
    ("dicom_seg output", "post", f"/infer/ae?image={FILM_ID}&output=dicom_seg", {}, 400),
    ("upload with traversal id", "put", "/datastore/image?image=../escaped", {"film": True}, 400),
    ("label for unknown image", "put", "/datastore/label?image=no-such-image&tag=final", {"label": True}, 404),
    ("label tag traversal", "put", f"/datastore/label?image={FILM_ID}&tag=../x", {"label": True}, 400),
    ("label of another shape", "put", f"/datastore/label?image={FILM_ID}&tag=final", {"label": "small"}, 422),
    ("delete unknown image", "delete", "/datastore/image?id=no-such-image", {}, 404),
    ("delete traversal image", "delete", "/datastore/image?id=../../etc/passwd", {}, 400),
    ("delete missing label", "delete", f"/datastore/label?id={FILM_ID}&tag=final", {}, 404),
    ("train unknown model", "post", "/train/no-such-model", {"json": {}}, 404),
    ("train unknown setting", "post", "/train/ae", {"json": {"epochz": 1}}, 400),
    ("unknown strategy", "post", "/activelearning/no-such-strategy", {"json": {}}, 404),
    ("strategy unknown model", "post", "/activelearning/most_anomalous", {"json": {"model": "nope"}}, 404),
    ("unknown scoring", "post", "/scoring/no-such-method", {"json": {}}, 404),
    ("map of no result", "get", "/medanomaly/maps/not-a-result/passwd", {}, 404),
    ("unknown map", "get", "/medanomaly/maps/0123456789abcdef0123456789abcdef/anomaly.nrrd", {}, 404),
]


def snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def assert_clear_refusal(response, expected: int, what: str) -> None:
    assert response.status_code == expected, f"{what}: {response.status_code} {response.text[:300]}"
    detail = response.json().get("detail")
    assert isinstance(detail, str) and len(detail) > 10, f"{what}: no clear message: {response.text[:300]}"


def test_bad_input_corpus_is_refused_cleanly(server, data_root):
    files = corpus(server["files"], data_root)
    studies_before = snapshot(server["studies"])
    url = server["url"]
    assert len(BAD_UPLOADS) + len(BAD_REQUESTS) >= 25

    for name, expected in BAD_UPLOADS:
        with open(files[name], "rb") as stream:
            response = requests.post(f"{url}/infer/ae", files={"file": (name, stream)}, data={"params": "{}"},
                                     timeout=120)
        assert_clear_refusal(response, expected, name)
        if name in VALID_IMAGES_WRONG_MODEL:
            continue  # a valid MR or CT image may enter the datastore; only the film model refuses it
        # the same file offered to the datastore is refused too and leaves nothing behind
        with open(files[name], "rb") as stream:
            response = requests.put(f"{url}/datastore/image?image=bad-{name.split('.')[0]}",
                                    files={"file": (name, stream)}, timeout=120)
        assert_clear_refusal(response, expected, f"{name} into the datastore")

    film = SAMPLE / f"{FILM_ID}.jpeg"
    small = server["files"] / "small_label.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(small)
    for what, method, path, kwargs, expected in BAD_REQUESTS:
        kwargs = dict(kwargs)
        if kwargs.pop("film", False):
            kwargs["files"] = {"file": (film.name, film.read_bytes())}
        label = kwargs.pop("label", None)
        if label:
            kwargs["files"] = {"label": ("label.png", (small if label == "small" else film).read_bytes())}
        response = getattr(requests, method)(url + path, timeout=120, **kwargs)
        assert_clear_refusal(response, expected, what)

    # still serving, and nothing stray anywhere
    assert http_json(url + "/info/")["models"]["ae"]["medanomaly"]["trained"]
    good = requests.post(f"{url}/infer/ae?image={FILM_ID}&output=json", data={"params": "{}"}, timeout=120)
    assert good.status_code == 200 and good.json()["model"] == "ae"
    added = snapshot(server["studies"]) - studies_before
    assert {name for name in added if not name.startswith(".")} <= {"labels"}, added
    assert not (server["studies"] / "labels" / "final").exists() or not list((server["studies"] / "labels" / "final").iterdir())
    assert not list((server["work"] / "uploads").iterdir())
    assert not (Path("/etc/passwd").parent / "escaped").exists()
    datastore = http_json(url + "/datastore/?output=all")
    assert sorted(datastore["objects"]) == sorted(p.name[: -len(".jpeg")] for p in server["studies"].glob("*.jpeg"))


def test_a_16_bit_grey_film_is_valid_input(server, data_root):
    files = corpus(server["files"], data_root)
    with open(files["grey16.png"], "rb") as stream:
        response = requests.post(f"{server['url']}/infer/ae?output=json", files={"file": ("grey16.png", stream)},
                                 data={"params": "{}"}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["shape"] == [224, 224]
