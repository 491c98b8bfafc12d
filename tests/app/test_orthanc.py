"""DICOMweb against a real PACS: a Debian Orthanc with its DICOMweb plugin, started on loopback ports with its own
temporary storage, holding the real CR chest film. The server lists the film (CR, which MONAI Label would filter
out by default), infers on it, and saves a label back to the PACS as a DICOM SEG (highdicom: the film has neither
patient position nor frame of reference), which a DICOMweb search finds and a fresh server reads back on the
film's grid."""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pydicom
import pytest
from monailabel.client import MONAILabelClient
from monailabel_server import http_json, publish_quick_model, running_server
from orthanc_server import require_orthanc, running_orthanc, store_instance

from medanomaly.io import read_image, write_image


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    require_orthanc()
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        yield url


def test_cr_film_from_dicomweb_is_listed_scored_and_labelled(orthanc, data_root, tmp_path, kermany_films):
    film = data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm"
    store_instance(orthanc, film)
    store_instance(orthanc, data_root / "dicom" / "pydicom_data" / "693_UNCR.dcm")  # a CT: not for these models
    series = http_json(orthanc + "/dicom-web/series?Modality=CR")
    cr_series = series[0]["0020000E"]["Value"][0]

    models = tmp_path / "models"
    publish_quick_model(models, kermany_films["NORMAL"][:4], "ae", epochs=1)
    conf = {"model_dir": models, "models": "ae"}
    with running_server(f"{orthanc}/dicom-web", conf=conf) as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path))
        listed = http_json(url + "/medanomaly/images")["images"]
        assert listed == [cr_series]  # CR is listed although MONAI Label's default filter is CT only; the CT is not
        assert http_json(url + "/datastore/")["total"] == 1
        assert client.next_sample("random", {})["id"] == cr_series

        label_file, result = client.infer("ae", cr_series, {})
        assert result["modality"] == "CR" and result["modality_check"]["status"] == "ok"
        source = read_image(film)
        labelmap = read_image(label_file)
        assert labelmap.array.squeeze().shape == source.shape

        mask = np.zeros(source.shape, np.uint8)
        mask[800:1000, 500:700] = 1
        label = write_image(source, tmp_path / "lesion.nii.gz", mask)
        saved = client.save_label(cr_series, str(label), tag="final")
        assert saved["image"] == cr_series
        assert http_json(url + "/medanomaly/images")["labelled"] == [cr_series]
        assert client.next_sample("random", {}) == {}  # nothing left to label

    # the PACS holds the label as a SEG that references the film
    segs = http_json(orthanc + "/dicom-web/series?Modality=SEG")
    assert len(segs) == 1
    seg_series = segs[0]["0020000E"]["Value"][0]
    study = segs[0]["0020000D"]["Value"][0]
    assert study == pydicom.dcmread(film, stop_before_pixels=True).StudyInstanceUID
    instance = http_json(f"{orthanc}/series/{orthanc_series_id(orthanc, seg_series)}")["Instances"][0]
    with urllib.request.urlopen(f"{orthanc}/instances/{instance}/file", timeout=60) as response:
        (tmp_path / "seg.dcm").write_bytes(response.read())
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == cr_series
    film_uid = pydicom.dcmread(film, stop_before_pixels=True).SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == film_uid
    assert (seg.Rows, seg.Columns) == source.shape

    # a server with an empty cache reads the label from the PACS, on the film's grid
    with running_server(f"{orthanc}/dicom-web", conf={**conf, "work_dir": tmp_path / "fresh-work"}) as url:
        assert http_json(url + "/medanomaly/images")["labelled"] == [cr_series]
        stored = read_image(MONAILabelClient(url, tmpdir=str(tmp_path)).download_label(cr_series, "final"))
        assert stored.array.size == mask.size
        assert np.array_equal(stored.array.reshape(source.shape).astype(np.uint8), mask)


def orthanc_series_id(orthanc: str, series_uid: str) -> str:
    """Orthanc's own id of a series, from its DICOM SeriesInstanceUID."""
    request = urllib.request.Request(orthanc + "/tools/lookup", data=series_uid.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())[0]["ID"]
