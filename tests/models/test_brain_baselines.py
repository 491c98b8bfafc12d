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


def test_gmm_keeps_the_uniform_inside_em(data_root):
    """Real intensities of a healthy T1 plus a few far outliers: with the uniform inside EM the Gaussians stay on
    the tissue, while a plain Gaussian fit stretches a component towards the outliers."""
    from medanomaly.io import read_image
    from medanomaly.nets.intensity_mixture import fit_with_outliers
    from sklearn.mixture import GaussianMixture

    volume = read_image(data_root / "nifti" / "nilearn_mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    tissue = volume.array[volume.array > 0].astype(np.float64)
    tissue = np.random.default_rng(0).choice(tissue, 20000, replace=False) / np.median(tissue)
    voxels = np.concatenate([tissue, np.full(400, 6.0)])  # 2 % of voxels far above any tissue
    start = {"weights_init": [0.5, 0.5], "means_init": np.percentile(tissue, [25, 75])[:, None]}
    plain = GaussianMixture(2, random_state=0, **start).fit(voxels[:, None])
    fitted = fit_with_outliers(torch.as_tensor(voxels), torch.tensor([0.5, 0.5]),
                               torch.as_tensor(start["means_init"][:, 0]), torch.full((2,), float(tissue.var())),
                               0.1, -1.0, 8.0)
    # From the same start, plain EM must explain the outliers with a Gaussian; with the uniform inside EM both
    # Gaussians stay on the tissue (median 1) and narrow.
    assert plain.means_.max() > 1.5 or plain.covariances_.max() > 0.3
    assert float(fitted["means"].max()) < 1.3 and float(fitted["variances"].max()) < 0.1
    assert fitted["iterations"] > 1 and np.isfinite(fitted["log_likelihood"])


def test_brain_dae_shares_the_vae_encoder(brats_flair):
    train, sick = brats_flair
    model = medanomaly.create("brain-dae", base_channels=4, latent_size=16, epochs=2, batch_size=4)
    vae = medanomaly.create("vae-uncertainty", base_channels=4, latent_size=16)
    assert model.config["noise_std"] == 0.5
    ours = [type(m).__name__ for m in model.network.encoder.convolutions.modules()]
    assert ours == [type(m).__name__ for m in vae.network.encoder.convolutions.modules()]
    assert model.network.encoder.to_vector.out_features == 8 == vae.network.decoder.from_vector.in_features
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
