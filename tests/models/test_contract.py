"""The anomaly-model contract on real images: for every registered model (fit on a few images with its
`smoke_config`, predict a film, a single slice and a volume, save and load, describe); in depth with the conv
autoencoder on chest films: registry, calibration, checkpoints (round trip, atomic write, resume), bad input."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import medanomaly
from medanomaly import CheckpointError, UnknownModelError, UnsupportedImageError
from medanomaly.calibration import Calibration
from medanomaly.data import BUILDERS, read_manifest
from medanomaly.io import MedicalImage, read_image, write_image
from medanomaly.metrics import normal_percentile_threshold, youden_threshold

SMALL = {"image_size": 64, "batch_size": 4, "channels": [8, 16, 16], "epochs": 2}


@pytest.fixture(scope="module")
def kermany(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("kermany")
    paths = BUILDERS["kermany"](data_root, out, max_per_class=6)
    return {split: read_manifest(path) for split, path in paths.items()}


@pytest.fixture(scope="module")
def trained(kermany, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("ckpt") / "ae.pt"
    model = medanomaly.create("ae", **SMALL)
    model.fit(kermany["train"], val=kermany["val"], checkpoint=checkpoint, progress=False)
    return model, checkpoint


def test_registry_lists_creates_and_refuses():
    assert "ae" in medanomaly.list_models()
    assert medanomaly.describe_models()["ae"]["default_config"]["image_size"] == 160
    assert isinstance(medanomaly.create("ae"), medanomaly.AnomalyModel)
    with pytest.raises(UnknownModelError, match="no-such-model"):
        medanomaly.create("no-such-model")
    with pytest.raises(ValueError, match="imagesize"):
        medanomaly.create("ae", imagesize=64)


def test_models_declare_what_images_they_read():
    described = medanomaly.describe_models()
    json.dumps(described)  # what the server's /info/ returns
    for name, record in described.items():
        for key in ("modalities", "body_parts"):
            assert record[key] is None or all(isinstance(code, str) and code.isupper() for code in record[key])
        assert record["min_image_size"] >= 1
    assert described["brain-ae"]["modalities"] == ["MR"] and "BRAIN" in described["gmm"]["body_parts"]
    assert "CHEST" in described["densenet121"]["body_parts"] and "DX" in described["unet-patch-ae"]["modalities"]
    assert described["ddpm"]["body_parts"] == ["BREAST"] and "MG" in described["ae"]["modalities"]
    assert described["ddpm"]["uncertainty_map"] == "residual_std"
    assert described["vae-uncertainty"]["uncertainty_map"] == "U"
    assert described["ae"]["uncertainty_map"] is None


def test_predict_returns_map_and_mask_on_the_film_grid(trained, data_root):
    model, _ = trained
    film = read_image(data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm")  # not square, not 64 px
    result = model.predict(film)
    assert result.map.shape == film.shape and result.map.dtype == np.float32
    assert result.mask.shape == film.shape and result.mask.dtype == np.uint8
    assert np.array_equal(result.mask, (result.map >= result.meta["pixel_threshold"]).astype(np.uint8))
    assert result.score == pytest.approx(float(result.map.mean()), rel=0.1)  # MAE of the residual
    for key in ("model", "model_version", "image_threshold", "pixel_threshold", "threshold_source", "timings"):
        assert key in result.meta
    override = model.predict(film, threshold=0.0)
    assert override.mask.all() and override.meta["threshold_source"] == "request"


def test_volume_map_keeps_the_volume_geometry(trained, data_root, tmp_path):
    model, _ = trained
    volume = read_image(data_root / "nifti" / "ixi_nichart" / "IXI012-HH-1211_T1.nii.gz")
    result = model.predict(volume)
    assert result.map.shape == volume.shape
    assert len(result.meta["slice_scores"]) == volume.shape[0]
    assert result.score == pytest.approx(max(result.meta["slice_scores"]))
    write_image(result.image, tmp_path / "map.nrrd", array=result.map)
    written = read_image(tmp_path / "map.nrrd")
    assert written.same_geometry(volume)
    np.testing.assert_allclose(written.array, result.map)


def test_calibration_with_abnormal_cases_uses_youden(trained, kermany):
    model, _ = trained
    assert model.calibration["method"] == "youden"
    items = kermany["val"]
    scores = [model.predict(read_image(case.image)).score for case in items]
    expected = youden_threshold([int(c.is_abnormal) for c in items], scores)
    assert model.thresholds["image"] == pytest.approx(expected.threshold)
    assert model.calibration["image"]["sensitivity"] == pytest.approx(expected.sensitivity)


def test_calibration_with_normals_only_uses_a_percentile(trained, kermany):
    model, _ = trained
    normals = [case for case in kermany["val"] if not case.is_abnormal]
    model_copy = medanomaly.load(trained[1])
    record = model_copy.calibrate(normals)
    scores = [model.predict(read_image(case.image)).score for case in normals]
    assert record["method"] == "normal-percentile"
    assert model_copy.thresholds["image"] == pytest.approx(normal_percentile_threshold(scores, 0.05))


def test_calibration_is_one_object_applied_to_every_prediction(trained, kermany):
    model, checkpoint = trained
    calibrator = model.calibrator
    results = [model.predict(read_image(case.image)) for case in kermany["val"]]
    for result in results:
        mask, meta = calibrator.apply(result.score, result.map)
        np.testing.assert_array_equal(mask, result.mask)
        assert meta["normalised_score"] == result.meta["normalised_score"]
    scores = [r.score for r in results]
    normalised = [r.meta["normalised_score"] for r in results]
    assert np.array_equal(np.argsort(scores, kind="stable"), np.argsort(normalised, kind="stable"))
    assert calibrator.normalised_score(model.thresholds["image"]) == pytest.approx(0.5)
    assert Calibration.from_dict(json.loads(json.dumps(calibrator.to_dict()))) == calibrator
    # The checkpoint keeps the three parts under their own keys, as checkpoints written before Calibration did.
    payload = torch.load(checkpoint, weights_only=True)
    assert Calibration.from_dict(payload).thresholds == model.thresholds
    none = Calibration()
    assert none.is_anomalous(1.0) is None and none.normalised_score(1.0) is None
    assert not none.mask(results[0].map).any()


def test_checkpoint_round_trip_gives_the_same_map(trained, kermany, tmp_path):
    model, checkpoint = trained
    film = read_image(kermany["val"][0].image)
    loaded = medanomaly.load(checkpoint)
    before, after = model.predict(film), loaded.predict(film)
    np.testing.assert_array_equal(before.map, after.map)
    assert before.score == after.score
    assert loaded.model_version == model.model_version
    assert loaded.thresholds == model.thresholds and loaded.calibration == model.calibration
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["calibration"]["method"] == "youden"
    assert payload["preprocessing"] == {"image_size": 64, "clip_percentiles": [0.5, 99.5]}
    assert payload["stats"]["map_display_range"][0] < payload["stats"]["map_display_range"][1]


def test_resume_after_an_interruption_matches_an_uninterrupted_run(kermany, tmp_path):
    uninterrupted = medanomaly.create("ae", **SMALL)
    uninterrupted.fit(kermany["train"], progress=False)

    class Interrupted(Exception):
        pass

    def crash_after_first_epoch(record):
        if record["epoch"] == 1:
            raise Interrupted

    checkpoint = tmp_path / "ae.pt"
    with pytest.raises(Interrupted):
        medanomaly.create("ae", **SMALL).fit(kermany["train"], checkpoint=checkpoint, progress=False,
                                             on_epoch_end=crash_after_first_epoch)
    assert torch.load(checkpoint, weights_only=True)["train_state"]["epoch"] == 1
    resumed = medanomaly.create("ae", **SMALL)
    history = resumed.fit(kermany["train"], checkpoint=checkpoint, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    for name, value in uninterrupted.network.state_dict().items():
        torch.testing.assert_close(resumed.network.state_dict()[name], value, msg=name)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(trained, tmp_path, monkeypatch):
    model, checkpoint = trained
    target = tmp_path / "model.pt"
    model.save(target)
    original = target.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        model.save(target)
    assert target.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.pt"]


def test_unsupervised_training_leaves_abnormal_images_out(kermany):
    model = medanomaly.create("ae", **{**SMALL, "epochs": 1})
    history = model.fit(kermany["val"], progress=False)
    n_normal = sum(not case.is_abnormal for case in kermany["val"])
    assert history[0]["samples"] == n_normal < len(kermany["val"])


def test_bad_inputs_raise_clear_errors(trained, tmp_path):
    model, checkpoint = trained
    with pytest.raises(UnsupportedImageError, match="NaN or Inf"):
        model.predict(np.full((32, 32), np.nan, dtype=np.float32))
    with pytest.raises(UnsupportedImageError, match="2D film"):
        model.predict(np.zeros((2, 2, 32, 32), dtype=np.float32))
    with pytest.raises(UnsupportedImageError, match="zero size"):
        model.predict(np.zeros((0, 32), dtype=np.float32))
    with pytest.raises(UnsupportedImageError, match="at least 32 pixels on each side; got 16 x 300"):
        model.predict(np.ones((16, 300), dtype=np.float32))
    with pytest.raises(UnsupportedImageError, match="got 20 x 64"):
        model.predict(np.ones((3, 20, 64), dtype=np.float32))  # a volume: the in-plane size counts
    with pytest.raises(ValueError, match="cannot be set per request"):
        model.predict(np.zeros((32, 32), dtype=np.float32), image_size=32)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        medanomaly.load(corrupt)
    with pytest.raises(CheckpointError, match="not found"):
        medanomaly.load(tmp_path / "missing.pt")
    other = medanomaly.create("ae", channels=[4, 8, 8])
    with pytest.raises(CheckpointError, match="do not fit"):
        other._load_payload(torch.load(checkpoint, weights_only=True))


def test_request_options_apply_to_one_call_and_are_reported(data_root):
    model = medanomaly.create("vae-vlb")
    film = read_image(data_root / "kermany_cxr" / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    default = model.config["vlb_samples"]
    result = model.predict(film, vlb_samples=default + 2)
    assert result.meta["options"]["vlb_samples"] == default + 2  # what this call ran with
    assert model.config["vlb_samples"] == default  # and the model is back to its own setting


# ----- the contract, for every registered model -----
# Each model class declares a tiny `smoke_config`; a model added later is picked up by the registry alone.


def _item(image, abnormal: bool):
    return SimpleNamespace(image=image, mask=None, roi=None, label=int(abnormal), is_abnormal=abnormal)


def _images(normal: list, abnormal: list) -> dict:
    """Training items (four normal images, two abnormal: supervised models need both) and the three inputs."""
    film, other = normal[4], normal[5]
    return {"train": [_item(image, False) for image in normal[:4]] + [_item(image, True) for image in abnormal[:2]],
            "inputs": {"film": film, "slice": MedicalImage(film.array[None]),
                       "volume": MedicalImage(np.stack([film.array, other.array]))}}


@pytest.fixture(scope="module")
def contract_images(data_root, kermany_films):
    """Real images for each kind of model: chest films (224^2 Kermany), mammograms (mini-MIAS, every fourth pixel:
    256^2) and healthy brain MRI slices (IXI T1, 2 mm; the abnormal ones are tumour slices from BraTS)."""
    chest = _images([read_image(path) for path in kermany_films["NORMAL"][:6]],
                    [read_image(path) for path in kermany_films["PNEUMONIA"][:2]])
    mias = data_root / "mini_mias" / "images"
    breast = _images([MedicalImage(read_image(mias / f"{n}.png").array[::4, ::4])
                      for n in ("mdb003", "mdb004", "mdb006", "mdb007", "mdb008", "mdb009")],
                     [MedicalImage(read_image(mias / f"{n}.png").array[::4, ::4]) for n in ("mdb001", "mdb002")])
    slices = []
    for name in ("IXI012-HH-1211_T1.nii.gz", "IXI015-HH-1258_T1.nii.gz"):
        volume = read_image(data_root / "nifti" / "ixi_nichart" / name).array
        slices += [MedicalImage(volume[len(volume) // 2 + offset]) for offset in (-4, 0, 4)]
    case = data_root / "brats2015" / "train" / "brats_2013_pat0005_1"
    flair = read_image(case / "Flair_subtrMeanDivStd.nii.gz").array
    largest = int(np.argmax((read_image(case / "OTMultiClass.nii.gz").array > 0).sum(axis=(1, 2))))
    tumour = [MedicalImage(flair[k]) for k in (largest, largest + 3)]
    return {"chest": chest, "breast": breast, "brain": _images(slices, tumour)}


def _images_for(cls) -> str:
    if cls.modalities and "MR" in cls.modalities:
        return "brain"
    return "breast" if cls.body_parts and "BREAST" in cls.body_parts else "chest"


@pytest.mark.parametrize("name", medanomaly.list_models())
def test_every_model_keeps_the_contract(name, contract_images, tmp_path):
    cls = medanomaly.model_class(name)
    described = cls.describe()
    assert json.loads(json.dumps(described)) == described
    assert cls.smoke_config, f"{name} declares no smoke_config"
    images = contract_images[_images_for(cls)]

    model = medanomaly.create(name, **cls.smoke_config)
    history = model.fit(images["train"], progress=False)
    assert history and model.train_state["finished"]
    assert model.thresholds["image"] is not None and model.thresholds["pixel"] is not None

    results = {}
    for kind, image in images["inputs"].items():
        result = results[kind] = model.predict(image)
        assert result.map.shape == image.shape and result.map.dtype == np.float32, kind
        assert result.mask.shape == image.shape and result.mask.dtype == np.uint8, kind
        assert np.array_equal(result.mask, (result.map >= result.meta["pixel_threshold"]).astype(np.uint8))
        assert np.isfinite(result.score) and np.all(np.isfinite(result.map)), kind
        assert 0 <= result.meta["normalised_score"] <= 1
        assert result.meta["is_anomalous"] == (result.score >= model.thresholds["image"])
        assert result.meta["is_anomalous"] == (result.meta["normalised_score"] >= 0.5)
        for extra, values in result.extras.items():
            assert values.shape == image.shape, (kind, extra)
        if cls.uncertainty_map is not None:
            assert cls.uncertainty_map in result.extras, kind
        if kind == "volume":
            assert len(result.meta["slice_scores"]) == image.shape[0]
        json.dumps(result.summary())

    too_small = max(1, cls.min_image_size - 1)
    if too_small < cls.min_image_size:
        with pytest.raises(UnsupportedImageError, match=f"at least {cls.min_image_size} pixels"):
            model.predict(np.ones((too_small, max(64, cls.min_image_size)), dtype=np.float32))

    before = results["film"]
    after = medanomaly.load(model.save(tmp_path / f"{name}.pt")).predict(images["inputs"]["film"])
    assert after.score == pytest.approx(before.score, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(after.map, before.map, rtol=1e-4, atol=1e-6)
    assert after.meta["model_version"] == before.meta["model_version"]
