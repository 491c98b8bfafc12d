"""The command line end to end on real films: manifests -> train -> evaluate -> predict."""
import json
import subprocess
import sys

import numpy as np

from medanomaly.io import read_image


def run_cli(*args, cwd=None):
    done = subprocess.run([sys.executable, "-m", "medanomaly", *map(str, args)], capture_output=True,
                          encoding="utf-8", errors="replace", cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def test_train_evaluate_predict(data_root, tmp_path):
    run_cli("manifests", "kermany", "--data", data_root, "--out", tmp_path / "kermany", "--config", "max_per_class=5")
    checkpoint = tmp_path / "ae.pt"
    trained = json.loads(run_cli("train", "--model", "ae", "--manifest", tmp_path / "kermany" / "train.csv",
                                 "--val", tmp_path / "kermany" / "val.csv", "--out", checkpoint, "--epochs", "1",
                                 "--config", "image_size=64", "channels=[8,16,16]")[-1])
    assert trained["epochs"] == 1 and trained["calibration"] == "youden" and checkpoint.is_file()

    lines = run_cli("evaluate", "--checkpoint", checkpoint, "--manifest", tmp_path / "kermany" / "val.csv",
                    "--out", tmp_path / "results", "--overlays", "2")
    summary = json.loads(lines[-1])  # the contract: the last line is one JSON object
    assert 0.0 <= summary["image_auroc"] <= 1.0
    assert summary["n_normal"] == 5 and summary["n_abnormal"] == 5
    assert summary["seconds_per_image"] > 0
    assert (tmp_path / "results" / "roc_image.png").is_file()
    assert len(list((tmp_path / "results").glob("overlay_*.png"))) == 2

    film = data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm"
    predicted = json.loads(run_cli("predict", "--checkpoint", checkpoint, film, "--out", tmp_path / "map.nrrd",
                                   "--mask-out", tmp_path / "mask.nrrd")[-1])
    source, heatmap, mask = read_image(film), read_image(tmp_path / "map.nrrd"), read_image(tmp_path / "mask.nrrd")
    assert heatmap.same_geometry(source) and mask.same_geometry(source)
    assert predicted["model"] == "ae" and predicted["model_version"] == trained["model_version"]
    assert np.array_equal(mask.array, (heatmap.array >= predicted["pixel_threshold"]).astype(np.float32))


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "medanomaly", "predict", "--checkpoint", tmp_path / "none.pt",
                           empty, "--out", tmp_path / "map.nrrd"], capture_output=True,
                          encoding="utf-8", errors="replace")
    assert done.returncode == 2
    assert "checkpoint not found" in done.stderr and "Traceback" not in done.stderr
