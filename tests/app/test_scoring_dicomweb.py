"""Batch scoring straight from a real PACS: Orthanc's DICOMweb lists the series by modality and the scorer streams
them one at a time (CR films, one of them JPEG 2000, a JPEG CR, MR slices; a CT that is not asked for)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch
from monailabel_server import REPO, free_port
from orthanc_server import require_orthanc, running_orthanc, store_instance

import medanomaly
from medanomaly.io import read_image
from medanomaly.scoring import DicomWebSource, score_archive


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, data_root):
    """Orthanc holding real DICOM files; yields (DICOMweb URL, {series UID: file})."""
    require_orthanc()
    dicom = data_root / "dicom"
    files = [dicom / "pydicom_data" / "RG1_UNCR.dcm", dicom / "pydicom_data" / "RG3_J2KR.dcm",
             next((dicom / "torchxrayvision_tests").glob("*.dcm")), dicom / "pydicom_wheel" / "MR_small.dcm",
             dicom / "pydicom_data" / "emri_small.dcm", dicom / "pydicom_data" / "693_UNCR.dcm"]
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        series = {}
        for file in files:
            store_instance(url, file)
            header = pydicom.dcmread(file, stop_before_pixels=True)
            series[str(header.SeriesInstanceUID)] = (file, str(header.Modality))
        yield url + "/dicom-web", series


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, kermany_films) -> Path:
    path = tmp_path_factory.mktemp("model") / "ae.pt"
    medanomaly.create("ae", epochs=1, batch_size=4).fit([str(f) for f in kermany_films["NORMAL"][:8]],
                                                        checkpoint=path, progress=False)
    return path


def test_cr_series_are_listed_streamed_and_scored(pacs, checkpoint, tmp_path):
    url, series = pacs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = score_archive(checkpoint, DicomWebSource(url, ["CR"]), tmp_path / "cr", workers=2, maps=True)
        rows = rows_of(tmp_path / "cr" / "scores.csv")
        cr = sorted(uid for uid, (_, modality) in series.items() if modality == "CR")
        assert [row["id"] for row in rows] == cr  # the CR series only: not the CT, not the MR
        assert summary["errors"] == 0, rows
        model = medanomaly.load(checkpoint)
        for row in rows:  # the film that came over DICOMweb scores as the file itself
            result = model.predict(read_image(series[row["id"]][0]))
            assert float(row["score"]) == pytest.approx(result.score, rel=1e-6)
            assert read_image(tmp_path / "cr" / row["map"]).shape == result.map.shape
    finally:
        torch.set_num_threads(threads)

    again = score_archive(checkpoint, DicomWebSource(url, ["CR"]), tmp_path / "cr", workers=0)
    assert again["skipped"] == len(cr) and again["scored"] == 0


def test_two_processes_stream_their_share_into_the_same_csv(pacs, checkpoint, tmp_path):
    url, series = pacs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score_archive(checkpoint, DicomWebSource(url, ["CR", "MR"]), tmp_path / "one", workers=1)
    finally:
        torch.set_num_threads(threads)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "medanomaly", "score", "--checkpoint", str(checkpoint),
               "--dicomweb", url, "--modality", "CR,MR", "--out", str(tmp_path / "two")]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = rows_of(tmp_path / "one" / "scores.csv")
    assert len(one) == sum(modality in ("CR", "MR") for _, modality in series.values())
    assert all(row["score"] and not row["error"] for row in one)
    assert (tmp_path / "two" / "scores.csv").read_text() == (tmp_path / "one" / "scores.csv").read_text()


def test_an_unreachable_pacs_is_a_clear_error(checkpoint, tmp_path, capsys):
    from medanomaly.cli import main

    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    code = main(["score", "--checkpoint", str(checkpoint), "--dicomweb", url, "--modality", "CR", "--out",
                 str(tmp_path / "out")])
    assert code == 2 and f"DICOMweb server {url} did not list the CR series" in capsys.readouterr().err
