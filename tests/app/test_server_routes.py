"""Every route of the running server, MONAI Label's own included: training settings are checked before a job is
accepted, ids are checked in one place for every route that takes one, a degenerate image is refused with the
reason, and a fuzz run over the server's own OpenAPI schema finds no 5xx (and leaves the server answering)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from monailabel_server import REPO, fill_studies, http_json, publish_quick_model, running_server

FILM_ID = "kermany-normal-IM-0115-0001"
ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}
FUZZ_EXAMPLES = 8  # per operation: bounded so that the run takes a few minutes on two cores


@pytest.fixture(scope="module")
def server(tmp_path_factory, kermany_films):
    root = tmp_path_factory.mktemp("routes")
    studies = fill_studies(root / "studies", [REPO / "sample_data" / "chest" / f"{FILM_ID}.jpeg"])
    publish_quick_model(root / "models", kermany_films["NORMAL"][:4], "ae", epochs=1)
    # under an ASCII locale, as on some CI machines: no route may depend on the locale's encoding
    with running_server(studies, conf={"model_dir": root / "models", "models": "ae"}, env=ASCII_LOCALE) as url:
        yield {"url": url, "root": root, "studies": studies}


def refusal(response, status: int) -> str:
    assert response.status_code == status, f"{response.status_code} {response.text[:300]}"
    return response.json()["detail"]


def training_status(url: str) -> tuple[int, str]:
    """GET /train/ as it answers (404 while no training was ever submitted)."""
    response = requests.get(url + "/train/", timeout=60)
    return response.status_code, response.text


def test_negative_epochs_are_refused_before_submission(server):
    before = training_status(server["url"])
    detail = refusal(requests.post(server["url"] + "/train/ae", json={"epochs": -3}, timeout=60), 400)
    assert "epochs" in detail and ">= 1" in detail
    assert training_status(server["url"]) == before  # no job was submitted


def test_minutes_as_a_word_is_refused_before_submission(server):
    before = training_status(server["url"])
    detail = refusal(requests.post(server["url"] + "/train/ae", json={"minutes": "soon"}, timeout=60), 400)
    assert "minutes" in detail and "> 0" in detail
    assert training_status(server["url"]) == before


@pytest.mark.parametrize("settings, words", [
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"seed": "zero"}, "seed"),
    ({"device": 3}, "device"),
])
def test_other_bad_settings_name_the_key(server, settings, words):
    body = requests.models.complexjson.dumps(settings, allow_nan=True)
    response = requests.post(server["url"] + "/train/ae", data=body, headers={"content-type": "application/json"},
                             timeout=60)
    # Infinity is not strict JSON, but the server's parser reads it as a float: the settings check refuses it
    assert words in refusal(response, 400)


def test_monai_label_delete_route_refuses_a_traversal_id(server):
    """MONAI Label's own DELETE /datastore/?id= reached LocalDatastore.remove_image and answered 500."""
    outside = server["root"] / "outside.txt"
    outside.write_text("must stay", encoding="utf-8")
    for path in ("/datastore/?id=../../etc/passwd", f"/datastore/?id=../{outside.name}",
                 "/datastore/image?id=..%2F..%2Fetc%2Fpasswd"):
        detail = refusal(requests.delete(server["url"] + path, timeout=60), 400)
        assert "invalid image id" in detail
    assert outside.read_text(encoding="utf-8") == "must stay"
    assert refusal(requests.delete(server["url"] + "/datastore/?id=no-such-image", timeout=60), 404)


@pytest.mark.parametrize("method, path", [
    ("get", "/datastore/image?image=../../etc/passwd"),
    ("head", "/datastore/image?image=../../etc/passwd"),
    ("get", "/datastore/image/info?image=..%2Fsecret"),
    ("get", "/datastore/label?label=../../etc/passwd&tag=final"),
    ("get", "/datastore/label/info?label=/etc/passwd&tag=final"),
    ("get", f"/datastore/label?label={FILM_ID}&tag=../final"),
    ("put", "/datastore/label/info?label=../x&tag=final"),
])
def test_every_route_taking_an_id_checks_it(server, method, path):
    response = getattr(requests, method)(server["url"] + path, timeout=60)
    assert response.status_code == 400, f"{method.upper()} {path}: {response.status_code} {response.text[:200]}"


def test_a_one_pixel_image_is_refused_with_the_reason(server, tmp_path):
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(tmp_path / "dot.png")
    with open(tmp_path / "dot.png", "rb") as stream:
        response = requests.post(server["url"] + "/infer/ae?output=json", files={"file": ("dot.png", stream)},
                                 data={"params": "{}"}, timeout=60)
    detail = refusal(response, 422)
    assert "1 x 1" in detail and "32" in detail
    with open(tmp_path / "dot.png", "rb") as stream:
        response = requests.put(server["url"] + "/datastore/image?image=dot", files={"file": ("dot.png", stream)},
                                timeout=60)
    assert "too small" in refusal(response, 422)
    assert "dot" not in http_json(server["url"] + "/datastore/?output=all")["objects"]


@pytest.mark.parametrize("method, path, status", [
    ("get", "/proxy/dicom/qido/studies", 404),  # no DICOMweb server behind a folder datastore
    ("post", "/proxy/dicom/stow/studies", 404),
    ("put", "/datastore/updatelabelinfo?label=no-such-image&tag=final", 404),
    ("put", f"/datastore/label/info?label={FILM_ID}&tag=final", 404),  # no final label yet
    ("post", "/infer/wsi/ae", 404),
    ("post", "/infer/wsi_v2/ae", 404),
    ("post", "/batch/infer/no-such-model", 404),
    ("put", "/model/ae", 405),
    ("get", "/datastore/dataset", 404),  # nothing labelled to archive
    ("get", "/model/no-such-model", 404),
])
def test_monai_label_routes_that_failed_answer_a_4xx(server, method, path, status):
    """MONAI Label's own handlers answered 500 to these (some are hidden from the schema, so the fuzzer does not
    reach them); the app wraps or overrides them."""
    assert len(refusal(getattr(requests, method)(server["url"] + path, timeout=60), status)) > 10


def test_the_published_checkpoint_is_served_by_monai_labels_model_route(server):
    response = requests.get(server["url"] + "/model/ae", timeout=60)
    assert response.status_code == 200
    assert response.content == (server["root"] / "models" / "ae" / "model.pt").read_bytes()
    assert http_json(server["url"] + "/model/info/ae")["checksum"].startswith("SHA256:")


def test_the_server_log_is_served_whatever_its_characters(server):
    """MONAI Label's /logs/ handler read the log in the locale's encoding: 500 once the log held a non-ASCII
    character under an ASCII locale."""
    line = "trained 3 × 4 films ✓ (é)"
    logging_dir = REPO / "monailabel_app" / "logs"
    with open(logging_dir / "app.log", "a", encoding="utf-8") as log:
        log.write(line + "\n")
    response = requests.get(server["url"] + "/logs/?lines=20&text=true", timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert line in response.text
    page = requests.get(server["url"] + "/logs/?lines=20&html=true&refresh=5", timeout=60)
    assert page.status_code == 200 and "setInterval(fetch, 1000*5)" in page.text


def test_schema_fuzzing_finds_no_server_error(server):
    """Schemathesis generates requests for every operation of /openapi.json (MONAI Label's and MedAnomaly's) from
    the schema: examples, boundary cases and random data, a bounded number per operation. No answer may be 5xx."""
    report = server["root"] / "fuzz"
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", server["url"] + "/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", str(FUZZ_EXAMPLES), "--workers", "1",
               "--seed", "1", "--no-shrink", "--request-timeout", "120", "--phases", "examples,coverage,fuzzing",
               "--generation-database", "none", "--no-color", "--report", "ndjson", "--report-dir", str(report)]
    # schemathesis draws its report with box characters and emoji: UTF-8 both ways, whatever the locale
    run = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=1500,
                         env={**os.environ, "PYTHONUTF8": "1", "PYTHONIOENCODING": "utf-8"})
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"schemathesis found server errors:\n{summary}\n{run.stderr[-2000:]}"
    assert "operations" in summary.lower() or "API Operations" in summary
    # the server still answers, and still scores
    assert "ae" in http_json(server["url"] + "/info/")["models"]
    scored = requests.post(f"{server['url']}/infer/ae?image={FILM_ID}&output=json", data={"params": "{}"}, timeout=120)
    assert scored.status_code == 200 and scored.json()["model"] == "ae"
