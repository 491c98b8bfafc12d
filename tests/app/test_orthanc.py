"""DICOMweb against a real PACS: a Debian Orthanc with its DICOMweb plugin, started on loopback ports with its own
temporary storage, holding the real CR chest film. The server lists the film (CR, which MONAI Label would filter
out by default), infers on it, and saves a label back."""
from __future__ import annotations

import numpy as np
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
        # dcmqi cannot make a DICOM SEG of a CR film without patient position: the label stays on the server
        assert http_json(url + "/medanomaly/images")["labelled"] == [cr_series]
        assert client.next_sample("random", {}) == {}  # nothing left to label
        stored = client.download_label(cr_series, "final")
        assert read_image(stored).array.sum() == mask.sum()
