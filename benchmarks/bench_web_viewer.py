"""The web viewer's overhead: seconds from clicking "Compute anomaly map" to the heatmap on screen, against the
library's workflow end to end (upload, inference, maps downloaded), for a 224^2 film and a BraTS volume.

Web: headless Debian chromium drives the viewer (python -m MedAnomalyLib.web); the clock stops when the slice
view's streamed image changes after the status says the map arrived. The image is re-uploaded before each run, so
each run starts from the plain image on screen. Library: `AnomalyWorkflow.compute` + `wait` on the same file.
Both against the same real server and model (a quickly trained `ae`); medians of --repeats runs, alternating.

    .venv/bin/python benchmarks/bench_web_viewer.py [--repeats 3] [--brats CASE_DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDANOMALY_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "MedAnomalySlicer"))
sys.path.insert(0, str(REPO / "tests" / "helpers"))  # server and viewer launchers (no test module)

from MedAnomalyLib import AnomalyWorkflow, read_volume  # noqa: E402
from monailabel_server import publish_quick_model, running_server  # noqa: E402
from web_viewer_process import (chromium_page, running_web_viewer, view_pixels, wait_for_status,  # noqa: E402
                                wait_for_view_change)

SMOKE_AE = {"image_size": 32, "batch_size": 4, "channels": [4, 8, 8]}


def web_seconds(page, path: Path) -> float:
    page.set_input_files("#upload", str(path))
    wait_for_status(page, f"Loaded {path.name}", timeout=600)
    page.wait_for_timeout(1500)  # the plain image settles on screen
    shown = view_pixels(page)
    start = time.monotonic()
    page.click("#compute")
    wait_for_status(page, "Anomaly map of", timeout=900)
    wait_for_view_change(page, shown, timeout=300)
    return time.monotonic() - start


def lib_seconds(workflow: AnomalyWorkflow, path: Path) -> float:
    volume = read_volume(path)
    start = time.monotonic()
    workflow.compute(volume, "ae", name=path.name)
    state = workflow.wait(900)
    if state.error:
        raise RuntimeError(state.error)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brats", type=Path, default=DATA / "brats2015" / "train" / "brats_2013_pat0005_1")
    args = parser.parse_args()
    films = sorted((DATA / "kermany_cxr" / "train" / "NORMAL").glob("*.jpeg"))
    inputs = {"film 224x224 (Kermany JPEG)": films[20],
              "BraTS FLAIR 240x240x155 (NIfTI)": args.brats / "Flair_subtrMeanDivStd.nii.gz"}
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        studies = work / "studies"
        studies.mkdir()
        for film in films[:3]:
            shutil.copy(film, studies / film.name)
        publish_quick_model(work / "models", films[:4], "ae", epochs=1, **SMOKE_AE)
        with running_server(studies, conf={"models": "ae", "model_dir": str(work / "models")}) as url, \
                running_web_viewer(url) as viewer, chromium_page() as page:
            workflow = AnomalyWorkflow()
            workflow.connect(url)
            workflow.wait(60)
            page.goto(viewer, timeout=120_000)
            page.click("#connect")
            wait_for_status(page, "Connected")
            print(f"{'input':34s} {'web s':>8s} {'library s':>10s} {'ratio':>6s}")
            for name, path in inputs.items():
                web_seconds(page, path), lib_seconds(workflow, path)  # warm-up of both paths
                web, lib = [], []
                for _ in range(args.repeats):
                    web.append(web_seconds(page, path))
                    lib.append(lib_seconds(workflow, path))
                web_median, lib_median = statistics.median(web), statistics.median(lib)
                print(f"{name:34s} {web_median:8.2f} {lib_median:10.2f} {web_median / lib_median:6.2f}", flush=True)
            workflow.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
