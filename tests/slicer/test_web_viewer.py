"""The web viewer (MedAnomalyLib.web on trame-slicer) driven as a person would, in Debian's headless chromium,
against the real server: load the sample CR film, compute the `ae` map, move the threshold, paint a stroke, submit,
and find the label on the server. Then bad input: server down, a 4xx refusal, a non-image upload, an oversized
volume. Screenshots of each step go to $MEDANOMALY_SCREENSHOTS (default: the test's temporary folder)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedAnomalySlicer"))

from MedAnomalyLib import MonaiLabelClient, read_volume  # noqa: E402
from MedAnomalyLib.web import MAX_VOXELS  # noqa: E402
from monailabel_server import free_port  # noqa: E402
from web_viewer_process import (chromium_available, chromium_page, running_web_viewer, view_pixels,  # noqa: E402
                                wait_for_error, wait_for_status, wait_for_view_change)

SAMPLE_CR_FILM = ROOT / "sample_data" / "chest" / "pydicom-RG1_J2KI.dcm"

pytestmark = pytest.mark.skipif(not chromium_available(), reason="Debian's chromium is missing: run `make chromium`")


@pytest.fixture(scope="module")
def viewer(server):
    with running_web_viewer(server) as url:
        yield url


@pytest.fixture()
def page(viewer):
    with chromium_page() as page:
        page.goto(viewer, timeout=120_000)
        page.wait_for_selector("#connect", timeout=120_000)
        if page.locator("#error").count():  # one viewer serves every page: close a message an earlier test left
            page.locator("#error button").first.click()
            page.wait_for_selector("#error", state="detached", timeout=30_000)
        yield page


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MEDANOMALY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def flagged_percent(page) -> float:
    return float(re.search(r"([\d.]+) % of pixels flagged", page.inner_text("#threshold-text")).group(1))


def test_clinician_workflow_in_the_browser(page, server, shots, tmp_path):
    page.click("#connect")
    assert wait_for_status(page, "Connected").startswith("Connected")
    card = page.inner_text("#model-card")
    assert card.startswith("ae (reconstruction), trained") and "Version ae-" in card
    page.screenshot(path=str(shots / "1-connected.png"))

    page.set_input_files("#upload", str(SAMPLE_CR_FILM))
    wait_for_status(page, "Loaded pydicom-RG1_J2KI")
    page.screenshot(path=str(shots / "2-film-loaded.png"))

    shown = view_pixels(page)
    page.click("#compute")
    wait_for_status(page, "Anomaly map of")
    wait_for_view_change(page, shown)  # the heatmap and segment reach the screen
    assert page.inner_text("#score").startswith("Score ")
    first = flagged_percent(page)
    page.screenshot(path=str(shots / "3-anomaly-map.png"))

    # Move the threshold as a person does: click on the slider's track, left of the thumb -> lower cut.
    shown = view_pixels(page)
    track = page.locator("#threshold .v-slider-track").bounding_box()
    page.mouse.click(track["x"] + 0.4 * track["width"], track["y"] + track["height"] / 2)
    page.wait_for_function(f"() => document.querySelector('#threshold-text').innerText.match(/([\\d.]+) %/)"
                           f" && parseFloat(document.querySelector('#threshold-text').innerText"
                           f".match(/([\\d.]+) %/)[1]) > {first}", timeout=60_000)
    lowered = flagged_percent(page)
    assert lowered > first
    wait_for_view_change(page, shown)
    page.screenshot(path=str(shots / "4-threshold-moved.png"))
    slider = page.locator("#threshold [role=slider]").first
    slider.focus()
    shown = view_pixels(page)
    slider.press("End")  # back to the highest cut: almost nothing flagged before the stroke
    page.wait_for_function(f"() => parseFloat(document.querySelector('#threshold-text').innerText"
                           f".match(/([\\d.]+) %/)[1]) < {lowered}", timeout=60_000)
    before_stroke = flagged_percent(page)
    wait_for_view_change(page, shown)  # the emptied segment reaches the screen

    # Paint a horizontal stroke across the middle of the slice view.
    page.click("#tool-paint")
    box = page.locator("#views").bounding_box()
    y = box["y"] + box["height"] / 2
    shown = view_pixels(page)
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.wait_for_timeout(300)
    page.mouse.down()
    page.wait_for_timeout(300)
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), y)
        page.wait_for_timeout(150)
    page.wait_for_timeout(1000)  # the view throttles pointer events: let the last move through before the release
    page.mouse.up()
    wait_for_view_change(page, shown)
    page.screenshot(path=str(shots / "5-stroke-painted.png"))

    page.click("#submit")
    status = wait_for_status(page, "Correction saved")
    image_id = re.search(r"for (\S+?)\.?$", status).group(1)
    page.screenshot(path=str(shots / "6-correction-submitted.png"))

    label = read_volume(MonaiLabelClient(server).download_label(image_id, tmp_path)).array[0]
    film = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CR_FILM)))[0]
    assert label.shape == film.shape
    painted = 100.0 * float((label > 0).mean())
    assert painted > before_stroke + 0.05, (painted, before_stroke)  # the stroke is in the server's label
    rows = np.nonzero(label)[0]
    assert abs(np.median(rows) - label.shape[0] / 2) < label.shape[0] / 6  # where it was painted: mid-film


def test_bad_input_shows_the_message_and_keeps_the_image(page, shots, tmp_path, kermany_films, data_root):
    page.click("#connect")
    wait_for_status(page, "Connected")

    image = sitk.ReadImage(str(kermany_films["NORMAL"][0]), sitk.sitkFloat32)
    pixels = sitk.GetArrayFromImage(image)
    pixels[50:60, 50:60] = np.nan  # a film the server refuses (422: NaN)
    broken = sitk.GetImageFromArray(pixels)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(tmp_path / "film-with-nan.nrrd"))
    page.set_input_files("#upload", str(tmp_path / "film-with-nan.nrrd"))
    wait_for_status(page, "Loaded film-with-nan")
    page.click("#compute")
    message = wait_for_error(page)
    assert message.startswith("Server error 422") and "NaN" in message, message
    assert "film-with-nan" in page.inner_text("#status") or page.inner_text("#status") == "Error"
    page.screenshot(path=str(shots / "7-server-refusal.png"))

    notes = tmp_path / "notes.txt"
    notes.write_text("an ordinary text file, not an image\n", encoding="utf-8")
    page.set_input_files("#upload", str(notes))
    page.wait_for_function("document.querySelector('#error') && "
                           "document.querySelector('#error').innerText.includes('notes.txt')", timeout=60_000)
    assert "notes.txt is not an image this viewer can read" in page.inner_text("#error")

    case = sorted((data_root / "brats2015" / "train").iterdir())[0]
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "Flair_subtrMeanDivStd.nii.gz")))
    slices = MAX_VOXELS // (flair.shape[1] * flair.shape[2]) + 1
    big = np.concatenate([flair] * (slices // flair.shape[0] + 1))[:slices]
    big = np.clip(big * 40 + 100, 0, 255).astype(np.uint8)  # small file, too many voxels
    sitk.WriteImage(sitk.GetImageFromArray(big), str(tmp_path / "brats-too-large.nii.gz"))
    page.set_input_files("#upload", str(tmp_path / "brats-too-large.nii.gz"))
    page.wait_for_function("document.querySelector('#error') && "
                           "document.querySelector('#error').innerText.includes('too-large')", timeout=120_000)
    assert f"takes volumes up to {MAX_VOXELS:,} voxels" in page.inner_text("#error")
    page.screenshot(path=str(shots / "8-volume-too-large.png"))

    page.fill("#server-url", f"http://127.0.0.1:{free_port()}")
    page.click("#connect")
    page.wait_for_function("document.querySelector('#error') && "
                           "document.querySelector('#error').innerText.startsWith('Cannot reach')", timeout=60_000)
    page.screenshot(path=str(shots / "9-server-down.png"))
    assert page.locator("#compute").is_enabled()  # still connected to the last server, the film still loaded


def test_next_image_from_the_datastore_is_scored_by_its_id(page, server):
    page.fill("#server-url", server)  # one viewer for all pages: an earlier test may have left another URL
    page.click("#connect")
    wait_for_status(page, "Connected")
    page.click("#next-image")
    status = wait_for_status(page, "Next image: ")
    image_id = status.split("Next image: ", 1)[1].split(" ")[0]
    listing = requests.get(f"{server}/medanomaly/images", timeout=30).json()
    assert image_id in listing["images"] and image_id not in listing["labelled"]
    page.click("#compute")
    assert wait_for_status(page, "Anomaly map of").startswith(f"Anomaly map of {image_id} by ae")


def test_retrain_shows_progress_and_refreshes_the_model_card(page, server):
    page.fill("#server-url", server)
    page.click("#connect")
    wait_for_status(page, "Connected")
    version = re.search(r"Version (\S+)$", page.inner_text("#model-card")).group(1)
    page.fill("#epochs", "1")
    page.fill("#minutes", "2")
    page.click("#retrain")
    wait_for_status(page, "Training ae", timeout=120)
    assert page.locator("#cancel").is_enabled()  # a running training can be cancelled from the page
    wait_for_status(page, "Connected", timeout=600)  # done, then the model list is read again
    assert re.search(r"Version (\S+)$", page.inner_text("#model-card")).group(1) != version
