"""U-Net patch autoencoder (and the pneumonia paper's CNN baseline) on real Kermany films."""
import math

import numpy as np
import pytest
import torch

import medanomaly
from medanomaly.inferers.patches import grid_corners, stitch_patch_values
from medanomaly.io import read_image
from medanomaly.losses import intensity_dice_loss
from medanomaly.methods.unet_patch_ae import SCORE_NAMES


@pytest.fixture(scope="module")
def films(kermany_films):
    return {label: [read_image(path) for path in paths[:4]] for label, paths in kermany_films.items()}


@pytest.fixture(scope="module")
def trained(films, tmp_path_factory):
    model = medanomaly.create("unet-patch-ae", epochs=3, batch_size=4)
    model.fit(films["NORMAL"], progress=False, checkpoint=tmp_path_factory.mktemp("ae") / "ae.pt")
    return model


def test_training_patches_lie_wholly_inside_the_lung_field(films):
    model = medanomaly.create("unet-patch-ae")
    square, _, lung = model.preprocess(films["NORMAL"][0].array)
    patches = model.lung_patches(square, lung)
    assert square.shape == lung.shape == (256, 256)
    assert 0 < len(patches.corners) < len(grid_corners(square.shape, 32, 20))
    for (row, col), patch in zip(patches.corners, patches.arrays):
        assert lung[row:row + 32, col:col + 32].all()
        assert np.array_equal(patch, square[row:row + 32, col:col + 32])
    samples = model.training_samples(type("Item", (), {"image": films["NORMAL"][0]})())
    assert len(samples) == len(patches.corners) and samples[0][0].shape == (1, 32, 32)


def test_a_256_film_gives_13_by_13_patches_at_stride_20():
    corners = grid_corners((256, 256), 32, 20)
    rows = sorted({row for row, _ in corners})
    assert rows == [0, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 220, 224]  # the last one meets the border
    assert len(corners) == 169


def test_dice_loss_matches_the_formula_on_a_hand_worked_case():
    output = torch.tensor([[[[1.0, 0.5]]]])
    target = torch.tensor([[[[0.5, 0.5]]]])
    # 2 * (1*0.5 + 0.5*0.5) / ((1 + 0.5) + (0.5 + 0.5)) = 1.5 / 2.5 = 0.6
    assert float(intensity_dice_loss(output, target, eps=0.0)) == pytest.approx(-math.log(0.6), rel=1e-6)
    # A perfect copy scores 0 only where the patch is binary: on intensities the loss of J against itself is
    # -ln(sum J^2 / sum J), here -ln(0.5), so its optimum pushes bright pixels to 1 and dark ones to 0.
    assert float(intensity_dice_loss(target, target, eps=0.0)) == pytest.approx(-math.log(0.5), rel=1e-6)
    binary = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    assert float(intensity_dice_loss(binary, binary, eps=0.0)) == pytest.approx(0.0, abs=1e-7)
    # per-sample loss, averaged over the batch
    both = intensity_dice_loss(torch.cat([output, target]), torch.cat([target, target]), eps=0.0)
    assert float(both) == pytest.approx((-math.log(0.6) - math.log(0.5)) / 2, rel=1e-6)


def test_training_lowers_the_loss_and_resumes(films, trained, tmp_path):
    history = trained.train_state["history"]
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    checkpoint = tmp_path / "resume.pt"
    model = medanomaly.create("unet-patch-ae", epochs=1, batch_size=16)
    model.fit(films["NORMAL"][:2], progress=False, checkpoint=checkpoint)
    resumed = medanomaly.create("unet-patch-ae", batch_size=16)
    history = resumed.fit(films["NORMAL"][:2], progress=False, checkpoint=checkpoint, epochs=2)
    assert [record["epoch"] for record in history] == [1, 2]


def test_the_map_covers_the_whole_film_on_its_own_grid(trained, data_root):
    film = read_image(data_root / "nih_cxr14" / "images_512" / "00000129_000.png").array[:, 40:480]  # not square
    scan = trained.scan(film)
    painted = stitch_patch_values(scan.sad, scan.corners, 32, scan.square.shape, fill_value=np.nan)
    assert not np.isnan(painted).any()  # every pixel of the square lies under some patch
    result = trained.predict(film)
    assert result.map.shape == film.shape and np.isfinite(result.map).all() and result.map.min() > 0
    assert result.extras["lung_field"].shape == film.shape and result.extras["lung_field"].any()
    assert result.meta["patches"] == len(scan.corners) and result.meta["lung_patches"] > 0


def test_the_four_sad_scores_and_the_configured_one(trained, films):
    film = films["PNEUMONIA"][0]
    result = trained.predict(film)
    figures = result.meta["sad_scores"]
    assert set(figures) == set(SCORE_NAMES)
    assert result.score == pytest.approx(figures["lung_mean"])
    assert figures["lung_max"] >= figures["lung_mean"] and figures["all_max"] >= figures["all_mean"]
    assert trained.predict(film, score="all_max").score == pytest.approx(figures["all_max"])
    with pytest.raises(ValueError):
        medanomaly.create("unet-patch-ae", score="median")


def test_save_and_load_give_the_same_map(trained, films, tmp_path):
    path = trained.save(tmp_path / "ae.pt")
    loaded = medanomaly.load(path)
    film = films["NORMAL"][1]
    assert np.allclose(loaded.predict(film).map, trained.predict(film).map, atol=1e-6)


def test_cnn_gradcam_map_has_the_films_size_and_is_not_constant(films):
    model = medanomaly.create("pneumonia-cnn", epochs=1, batch_size=4, image_size=128)
    model.fit(films["NORMAL"][:3] + [_sick(f) for f in films["PNEUMONIA"][:3]], progress=False)
    film = films["PNEUMONIA"][1]
    result = model.predict(film)
    assert result.map.shape == film.shape
    assert float(result.map.max()) > float(result.map.min())
    probabilities = result.meta["class_probabilities"]
    assert set(probabilities) == {"normal", "pneumonia"}
    assert result.score == pytest.approx(probabilities["pneumonia"], abs=1e-6)


def _sick(image):
    return type("Item", (), {"image": image, "mask": None, "roi": None, "label": 1, "is_abnormal": True})()
