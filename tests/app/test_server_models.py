"""Per-request model options and extra maps through the real server: options named in a model's
`inference_keys` reach predict(**options) (type-checked, unknown ones refused), extra maps such as the
aleatoric uncertainty U are served beside the heatmap, and "most uncertain" ranks by that U."""
from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel_server import REPO, fill_studies, http_json, publish_quick_model, running_server

from medanomaly.io import read_image

FILM_ID = "kermany-normal-IM-0115-0001"


@pytest.fixture(scope="module")
def server(tmp_path_factory, kermany_films):
    root = tmp_path_factory.mktemp("models")
    studies = fill_studies(root / "studies", sorted((REPO / "sample_data" / "chest").glob("kermany-*.jpeg")))
    for name in ("vae-vlb", "vae-uncertainty"):
        publish_quick_model(root / "models", kermany_films["NORMAL"][:4], name, epochs=1)
    # vae-uncertainty is a brain MRI model: the conf option lets it score these films for the test
    conf = {"model_dir": root / "models", "models": "vae-vlb,vae-uncertainty", "modalities_vae-uncertainty": "any"}
    with running_server(studies, conf=conf) as url:
        (root / "out").mkdir()
        yield {"url": url, "client": MONAILabelClient(url, tmpdir=str(root / "out")), "out": root / "out"}


def post_infer(server, model: str, params: str):
    return requests.post(f"{server['url']}/infer/{model}?image={FILM_ID}&output=json", data={"params": params},
                         timeout=300)


def test_inference_options_reach_predict(server):
    default = server["client"].infer("vae-vlb", FILM_ID, {})[1]
    assert default["options"] == {"vlb_samples": 3}
    _, result = server["client"].infer("vae-vlb", FILM_ID, {"vlb_samples": 1})
    assert result["options"] == {"vlb_samples": 1}
    # the option changed the computation: one Monte Carlo draw gives another score than three
    assert result["score"] != pytest.approx(default["score"], rel=1e-6)
    again = server["client"].infer("vae-vlb", FILM_ID, {})[1]
    assert again["options"] == {"vlb_samples": 3}  # the option held for that one request only
    info = http_json(server["url"] + "/info/")["models"]["vae-vlb"]
    assert info["config"]["vlb_samples"] == 3 and info["medanomaly"]["inference_options"] == ["vlb_samples"]


@pytest.mark.parametrize("params, words", [
    ('{"vlb_samples": "many"}', "integer"),
    ('{"vlb_samples": 1.5}', "integer"),
    ('{"vlb_samples": -2}', "negative"),
    ('{"repeats": 3}', "vlb_samples"),  # an option of another model: the message lists the allowed ones
])
def test_bad_option_values_are_refused(server, params, words):
    response = post_infer(server, "vae-vlb", params)
    assert response.status_code == 400 and words in response.json()["detail"]


def test_extra_maps_are_served_beside_the_heatmap(server):
    _, result = server["client"].infer("vae-uncertainty", FILM_ID, {})
    assert {"anomaly", "U"} <= set(result["maps"])
    with urllib.request.urlopen(server["url"] + result["maps"]["U"], timeout=60) as response:
        (server["out"] / "u.nrrd").write_bytes(response.read())
    uncertainty = read_image(server["out"] / "u.nrrd")
    assert uncertainty.shape == (224, 224) and np.isfinite(uncertainty.array).all() and uncertainty.array.max() > 0


def test_most_uncertain_ranks_by_aleatoric_uncertainty(server):
    pick = server["client"].next_sample("most_uncertain", {"model": "vae-uncertainty"})
    assert pick["reason"] == "highest mean aleatoric uncertainty"
    scored = requests.post(server["url"] + "/scoring/anomaly_score", json={"model": "vae-uncertainty"},
                           timeout=300).json()["scores"]["vae-uncertainty"]
    assert pick["id"] == max(scored, key=lambda key: scored[key]["uncertainty"])
    # a film model without U falls back to the score closest to its image threshold
    fallback = server["client"].next_sample("most_uncertain", {"model": "vae-vlb"})
    assert fallback["reason"] == "score closest to the image threshold"


@pytest.mark.parametrize("mode", ["flag", "refuse"])
def test_modality_screen_flags_or_refuses(tmp_path, kermany_films, data_root, mode):
    """The app's infer task in this process: an MR DICOM on the film model is served with a warning (flag) or
    refused with the reason (refuse)."""
    import sys

    from fastapi import HTTPException

    sys.path.insert(0, str(REPO / "monailabel_app"))
    from lib.configs import model_configs
    from lib.results import ResultStore

    publish_quick_model(tmp_path / "models", kermany_films["NORMAL"][:4], "ae", epochs=1)
    config = model_configs(tmp_path / "models", {"models": "ae"}, results=ResultStore(tmp_path / "maps"),
                           label_dir=tmp_path / "out", modality_mode=mode)["ae"]
    task = config.infer()  # the TaskConfig gives its infer task, as MONAI Label's radiology app does
    request = {"model": "ae", "image": str(data_root / "dicom" / "pydicom_data" / "MR2_UNCR.dcm")}
    if mode == "refuse":
        with pytest.raises(HTTPException) as refused:
            task(request)
        assert refused.value.status_code == 422 and "modality MR" in refused.value.detail
    else:
        label_file, result = task(request)
        assert result["modality_check"]["status"] == "mismatch" and "MR" in result["modality_check"]["message"]
        assert read_image(label_file).shape == read_image(request["image"]).shape
