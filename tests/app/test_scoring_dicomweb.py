"""Batch scoring straight from a real PACS: Orthanc's DICOMweb lists the series by modality and the scorer streams
them one at a time (CR films, one of them JPEG 2000, a JPEG CR, single- and multi-frame MR, an MR series of one file
per slice made from a real IXI brain; a CT that is not asked for)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monailabel_server import REPO, free_port
from orthanc_server import require_orthanc, running_orthanc, store_instance

import medanomaly
from medanomaly.io import read_image
from medanomaly.io.dicomweb import list_series, read_series
from medanomaly.scoring import DicomWebSource, score_archive


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_mr_series(nifti: Path, folder: Path, first: int, count: int) -> tuple[str, np.ndarray]:
    """`count` axial slices of a real brain volume as an MR series of one DICOM file per slice (int16);
    returns the series UID and the slices in DICOM order (by position along the slice normal)."""
    block = sitk.ReadImage(str(nifti))[:, :, first:first + count]
    values = sitk.GetArrayFromImage(block)
    stored = np.round(values / values.max() * 3000).astype(np.int16)
    volume = sitk.GetImageFromArray(stored)
    volume.CopyInformation(block)
    d = volume.GetDirection()
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(np.array(d).reshape(3, 3)[:, 0], np.array(d).reshape(3, 3)[:, 1])
    positions = []
    for index in range(count):
        corner = volume.TransformIndexToPhysicalPoint((0, 0, index))
        positions.append(float(np.dot(corner, normal)))
        tags = {"0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": pydicom.uid.generate_uid(),
                "0020|000d": study, "0020|000e": series, "0020|0013": str(index + 1),
                "0018|0050": str(volume.GetSpacing()[2]), "0020|0032": "\\".join(f"{v:.4f}" for v in corner),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))}
        slice_image = volume[:, :, index]
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice-{index:03d}.dcm"))
        writer.Execute(slice_image)
    return series, stored[np.argsort(positions)]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, data_root):
    """Orthanc holding real DICOM files; yields (DICOMweb URL, {series UID: (file, modality)}); for the series of
    slice files the volume it holds stands in for the file."""
    require_orthanc()
    dicom = data_root / "dicom"
    files = [dicom / "pydicom_data" / "RG1_UNCR.dcm", dicom / "pydicom_data" / "RG3_J2KR.dcm",
             next((dicom / "torchxrayvision_tests").glob("*.dcm")), dicom / "pydicom_wheel" / "MR_small.dcm",
             dicom / "pydicom_data" / "emri_small.dcm", dicom / "pydicom_data" / "693_UNCR.dcm"]
    slices = tmp_path_factory.mktemp("mr-series")
    mr_series, mr_volume = write_mr_series(data_root / "nifti" / "ixi_nichart" / "IXI015-HH-1258_T1.nii.gz", slices,
                                           first=40, count=12)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        series = {}
        for file in files:
            store_instance(url, file)
            header = pydicom.dcmread(file, stop_before_pixels=True)
            series[str(header.SeriesInstanceUID)] = (file, str(header.Modality))
        for file in sorted(slices.glob("*.dcm")):
            store_instance(url, file)
        series[mr_series] = (mr_volume, "MR")
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


def test_a_series_of_slice_files_arrives_as_one_volume(pacs):
    url, series = pacs
    uid, volume = next((uid, value) for uid, (value, _) in series.items() if isinstance(value, np.ndarray))
    ref = next(ref for ref in list_series(url, ["MR"]) if ref.series == uid)
    image = read_series(ref, url)
    assert image.shape == volume.shape and np.array_equal(image.array, volume)  # every slice, in order, exact


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
                          encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = rows_of(tmp_path / "one" / "scores.csv")
    assert len(one) == sum(modality in ("CR", "MR") for _, modality in series.values())
    assert all(row["score"] and not row["error"] for row in one)
    assert (tmp_path / "two" / "scores.csv").read_bytes() == (tmp_path / "one" / "scores.csv").read_bytes()


def test_an_unreachable_pacs_is_a_clear_error(checkpoint, tmp_path, capsys):
    from medanomaly.cli import main

    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    code = main(["score", "--checkpoint", str(checkpoint), "--dicomweb", url, "--modality", "CR", "--out",
                 str(tmp_path / "out")])
    assert code == 2 and f"DICOMweb server {url} did not list the CR series" in capsys.readouterr().err
