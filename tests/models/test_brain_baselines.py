"""Baselines of the brain VAE on real BraTS slices: the modified GMM, the brain AE/DAE, and the film DAE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medanomaly
from medanomaly.data.builders import BUILDERS
from medanomaly.data.manifest import load_case, read_manifest


@pytest.fixture(scope="module")
def brats_flair(data_root, tmp_path_factory):
    """A few tumour-free training slices and the most tumorous validation slice (as loaded manifest cases)."""
    paths = BUILDERS["brats"](data_root, tmp_path_factory.mktemp("brats"), sequence="Flair")
    train = read_manifest(paths["train"])[::12]
    val = read_manifest(paths["val"])
    sick = max(val, key=lambda case: int(case.extra["tumour_pixels"]))
    return train, load_case(sick)


def test_gmm_posterior_is_a_probability_and_flags_the_tumour(brats_flair, tmp_path):
    train, sick = brats_flair
    model = medanomaly.create("gmm", components=3)
    history = model.fit(train, progress=False, checkpoint=tmp_path / "gmm.pt")
    assert history[0]["voxels"] > 1000 and np.isfinite(history[0]["loss"])
    assert model.train_state["finished"] and model.thresholds["pixel"] is not None

    result = model.predict(sick.image)
    assert result.map.shape == sick.image.shape
    assert result.map.min() >= 0.0 and result.map.max() <= 1.0
    brain, tumour = sick.roi, sick.mask > 0
    # FLAIR: tumour and oedema are hyperintense, so the outlier component explains them better than normal tissue.
    assert result.map[tumour & brain].mean() > result.map[~tumour & brain].mean()

    # Raw posteriors over a wide intensity range, beyond anything seen in training, stay in [0, 1].
    grid = torch.linspace(-100.0, 100.0, 2001)
    posterior = model.network(grid).numpy()
    assert posterior.min() >= 0.0 and posterior.max() <= 1.0 and posterior.max() > 0.99

    again = medanomaly.load(tmp_path / "gmm.pt")
    np.testing.assert_allclose(again.predict(sick.image).map, result.map, rtol=1e-6)
    with pytest.raises(ValueError):
        medanomaly.create("gmm", uniform_weight=1.5)


def test_brain_dae_reconstructs_intensities_above_one(brats_flair):
    train, sick = brats_flair
    model = medanomaly.create("brain-dae", channels=[8, 16, 32], epochs=2, batch_size=4)
    assert model.config["noise_std"] == 0.5 and not isinstance(model.network.decoder[-1], torch.nn.Sigmoid)
    history = model.fit(train, val=train[:2] + [sick], progress=False)
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])
    result = model.predict(sick.image)
    assert result.map.shape == sick.image.shape and result.map.min() >= 0
    assert np.all(result.map[~sick.roi] == 0)  # maps are zero outside the brain


def test_dae_is_the_conv_autoencoder_with_noise_and_squared_error():
    assert {"vae-vlb", "vae-uncertainty", "ae", "dae", "gmm", "brain-ae", "brain-dae"} <= set(medanomaly.list_models())
    dae = medanomaly.create("dae")
    assert dae.config["noise_std"] == 0.5 and dae.config["residual"] == "squared"
    assert isinstance(dae, type(medanomaly.create("ae")))
    assert medanomaly.create("brain-ae").config["noise_std"] == 0.0
