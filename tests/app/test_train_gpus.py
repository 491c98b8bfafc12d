"""MONAI Label's multi-GPU train settings through the live server: a request naming more GPUs than this machine has
is a 400 that says so (nothing is started); malformed settings are 400s too; `multi_gpu` with `gpus: "all"` trains
(on this machine's GPUs under torchrun when it has several, else in the task's own process)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch
from monailabel_server import REPO, fill_studies, http_json, running_server, wait_for_training

SAMPLE = REPO / "sample_data"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    studies = fill_studies(root / "studies", sorted((SAMPLE / "chest").iterdir()))
    with running_server(studies, conf={"model_dir": root / "models", "models": "ae"}) as url:
        yield url


def post_train(url: str, params: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/train/ae", data=json.dumps(params).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_more_gpus_than_exist_is_a_400_that_says_so(server):
    present = torch.cuda.device_count()  # the server runs on this machine
    named = ",".join(str(gpu) for gpu in range(present + 1))
    status, body = post_train(server, {"multi_gpu": True, "gpus": named, "epochs": 1})
    assert status == 400
    assert f"gpus '{named}' names {present + 1} GPU(s), but this server has" in body["detail"]
    assert ("no CUDA GPU" if present == 0 else f"no GPU {present}") in body["detail"]
    with pytest.raises(urllib.error.HTTPError) as no_task:  # nothing was started: MONAI Label knows no train task
        http_json(server + "/train/")
    assert no_task.value.code == 404


@pytest.mark.parametrize("params, reason", [
    ({"gpus": "two"}, 'gpus must be "all" or GPU ids such as "0,1"'),
    ({"gpus": "0,0"}, 'gpus must be "all" or GPU ids such as "0,1"'),
    ({"multi_gpu": "sometimes"}, "multi_gpu must be true or false"),
])
def test_malformed_gpu_settings_are_400s(server, params, reason):
    status, body = post_train(server, {**params, "epochs": 1})
    assert status == 400 and reason in body["detail"]


def test_the_gpu_settings_are_offered_and_all_gpus_trains(server):
    offered = http_json(server + "/info/")["trainers"]["ae"]["config"]
    assert offered["multi_gpu"] is True and offered["gpus"] == "all"

    status, body = post_train(server, {"multi_gpu": True, "gpus": "all", "epochs": 1})
    assert status == 200, body
    finished = wait_for_training(server, timeout=600)
    assert finished["status"] == "DONE", finished.get("details")
    stats = http_json(server + "/info/")["train_stats"]["ae"]
    assert stats["status"] == "DONE" and stats["model_version"].startswith("ae-v")


def test_the_launch_for_several_gpus_runs_ddp_training_on_the_datastore(tmp_path, kermany_films, capfd):
    """What the task runs when several GPUs are visible, here with two CPU processes (DDP over gloo):
    torchrun -m medanomaly train on manifests of the datastore files; rank 0 alone writes the checkpoint."""
    import sys

    import medanomaly
    from medanomaly.data import read_manifest
    from monailabel.datastore.local import LocalDatastore

    sys.path.insert(0, str(REPO / "monailabel_app"))
    from lib.trainers.anomaly_train import datastore_items, split
    from lib.trainers.multi_gpu import train_with_torchrun

    studies = fill_studies(tmp_path / "studies", kermany_films["NORMAL"][:6])
    store = LocalDatastore(str(studies), extensions=["*.jpeg"], auto_reload=False)
    train, val = split(datastore_items(store), supervised=False)
    checkpoint = tmp_path / "models" / "ae" / "training.pt"
    checkpoint.parent.mkdir(parents=True)
    train_with_torchrun("ae", 2, train, val, store, checkpoint, {"epochs": 1, "batch_size": 2}, None)

    model = medanomaly.load(checkpoint)
    assert model.train_state["finished"] and len(model.train_state["history"]) == 1
    cases = read_manifest(checkpoint.parent / "distributed" / "train.csv")
    assert sorted(case.image for case in cases) == sorted(studies.glob("*.jpeg"))  # the datastore's own files
    assert capfd.readouterr().out.count('"checkpoint": ') == 1  # one report, from rank 0
