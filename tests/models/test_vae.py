"""The VAE family on real images: the uncertainty-aware brain VAE's maps, the VLB chest VAE, brain preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medanomaly
from medanomaly.brain import derive_brain_mask, prepare_brain_slice
from medanomaly.io import read_image, write_image
from medanomaly.losses import gaussian_kl, gaussian_terms
from medanomaly.preprocess import resize_keep_aspect

BRATS_CASE = "brats2015/train/brats_2013_pat0005_1"


@pytest.fixture(scope="module")
def brats_volume(data_root):
    flair = read_image(data_root / BRATS_CASE / "Flair_subtrMeanDivStd.nii.gz")
    brain = read_image(data_root / BRATS_CASE / "brainmask.nii.gz").array > 0
    tumour = read_image(data_root / BRATS_CASE / "OTMultiClass.nii.gz").array > 0
    return flair, brain, tumour


@pytest.fixture(scope="module")
def brain_slices(brats_volume):
    """Tumour-free and tumour slices of a real BraTS FLAIR volume."""
    flair, brain, tumour = brats_volume
    area = brain.reshape(len(brain), -1).mean(axis=1)
    lesion = tumour.reshape(len(tumour), -1).sum(axis=1)
    normal = [i for i in np.flatnonzero(area > 0.15) if lesion[i] == 0]
    sick = int(np.argmax(lesion))
    return {"normal": [flair.array[i] for i in normal[::3][:8]], "sick": flair.array[sick],
            "sick_brain": brain[sick], "sick_tumour": tumour[sick]}


@pytest.fixture(scope="module")
def trained_uncertainty_vae(brain_slices):
    model = medanomaly.create("vae-uncertainty", base_channels=8, latent_size=16, batch_size=4, epochs=2,
                              device="cpu")
    model.fit(brain_slices["normal"], progress=False)
    return model


# ---------------------------------------------------------------------------------------------- brain preprocessing


def test_brats_slice_is_shifted_positive_and_median_normalised(brats_volume, brain_slices):
    flair, brain, _ = brats_volume
    raw = brain_slices["sick"]
    assert raw[brain_slices["sick_brain"]].min() < 0  # z-scored: negative values inside the brain
    derived = derive_brain_mask(raw)
    overlap = (derived & brain_slices["sick_brain"]).sum() / brain_slices["sick_brain"].sum()
    assert overlap > 0.99 and derived.sum() <= 1.01 * brain_slices["sick_brain"].sum()
    prepared = prepare_brain_slice(raw, 128)
    assert prepared.square.shape == (128, 128)
    inside = prepared.square[prepared.square_mask]
    assert inside.min() >= 0 and np.median(inside) == pytest.approx(1.0, abs=0.05)
    assert np.all(prepared.square[~prepared.square_mask] < 0.5)  # background stays near 0


# ---------------------------------------------------------------------------------------------- uncertainty VAE


def test_maps_split_into_aleatoric_and_normalised_error(trained_uncertainty_vae, brain_slices):
    model = trained_uncertainty_vae
    prepared = model.prepare(brain_slices["sick"])
    x = torch.as_tensor(prepared.square)[None, None]
    brain = torch.as_tensor(prepared.square_mask.astype(np.float32))[None, None]
    maps = {name: value[0] for name, value in model.square_maps(x, brain).items()}

    model.network.eval()
    with torch.no_grad():
        mean, log_var, _, _ = model.network(x, sample=False)
    mean, variance = mean.numpy()[0, 0].astype(np.float64), np.exp(log_var.numpy()[0, 0].astype(np.float64))
    pixels = prepared.square.astype(np.float64)
    expected_e = (pixels - mean) ** 2 / (2 * variance)
    expected_u = 0.5 * np.log(2 * np.pi * variance)
    np.testing.assert_allclose(maps["E"], expected_e, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(maps["U"], expected_u, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(maps["U"] + maps["E"], maps["L"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps["squared"], (pixels - mean) ** 2, rtol=1e-3, atol=1e-6)

    # The same error under a larger predicted sigma: less surprising (smaller E), more aleatoric (larger U).
    wider = gaussian_terms(x, torch.as_tensor(mean)[None, None].float(), log_var + 1.0)
    error = maps["squared"] > 1e-6
    assert np.all(wider["E"][0, 0].numpy()[error] < maps["E"][error])
    assert np.all(wider["U"][0, 0].numpy() > maps["U"])


def test_latent_is_one_vector_split_into_mean_and_log_variance(trained_uncertainty_vae, brain_slices):
    model = trained_uncertainty_vae
    model.network.eval()
    x = torch.as_tensor(model.prepare(brain_slices["sick"]).square)[None, None]
    with torch.no_grad():
        vector = model.network.encoder(x)
        mu, log_var = model.network.encode(x)
    assert vector.shape == (1, 16)  # Nz = latent_size
    torch.testing.assert_close(mu, vector[:, :8])
    torch.testing.assert_close(log_var, vector[:, 8:])
    assert model.network.decoder.from_vector.in_features == 8  # z has Nz / 2 dimensions
    with pytest.raises(ValueError, match="even"):
        medanomaly.create("vae-uncertainty", latent_size=15)


def test_latent_kl_matches_the_closed_form(trained_uncertainty_vae, brain_slices):
    model = trained_uncertainty_vae
    model.network.eval()
    x = torch.as_tensor(model.prepare(brain_slices["sick"]).square)[None, None]
    with torch.no_grad():
        mu, log_var = model.network.encode(x)
    closed_form = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).flatten(1).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, log_var), closed_form, rtol=1e-5, atol=1e-4)
    assert float(gaussian_kl(torch.zeros_like(mu), torch.zeros_like(log_var))) == 0.0  # the prior itself


def test_predict_returns_all_four_maps_inside_the_brain(trained_uncertainty_vae, brain_slices):
    result = trained_uncertainty_vae.predict(brain_slices["sick"])
    assert set(result.extras) == {"U", "L", "squared"} and result.meta["anomaly_map"] == "E"
    np.testing.assert_allclose(result.extras["U"] + result.map, result.extras["L"], rtol=1e-4, atol=1e-4)
    outside = ~derive_brain_mask(brain_slices["sick"])
    assert np.all(result.map[outside] == 0)
    with_l = trained_uncertainty_vae.predict(brain_slices["sick"], anomaly_map="L")
    np.testing.assert_allclose(with_l.map, result.extras["L"], rtol=1e-5)
    with pytest.raises(ValueError):
        medanomaly.create("vae-uncertainty", anomaly_map="bogus")


def test_volume_map_keeps_the_volume_geometry(trained_uncertainty_vae, data_root, tmp_path):
    volume = read_image(data_root / "nifti" / "ixi_nichart" / "IXI012-HH-1211_T1.nii.gz")
    result = trained_uncertainty_vae.predict(volume)
    assert result.map.shape == volume.shape and set(result.extras) == {"U", "L", "squared"}
    assert len(result.meta["slice_scores"]) == volume.shape[0]
    path = write_image(volume, tmp_path / "map.nii.gz", result.map)
    back = read_image(path)
    assert back.same_geometry(volume)
    np.testing.assert_allclose(back.array, result.map, rtol=1e-5, atol=1e-6)


def test_uncertainty_vae_save_load_round_trip(trained_uncertainty_vae, brain_slices, tmp_path):
    path = trained_uncertainty_vae.save(tmp_path / "vae.pt")
    again = medanomaly.load(path)
    np.testing.assert_allclose(again.predict(brain_slices["sick"]).map,
                               trained_uncertainty_vae.predict(brain_slices["sick"]).map, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- VLB VAE


def test_min_pad_resize_keeps_the_aspect_ratio(data_root):
    film = read_image(data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm").array  # 1955 x 1841 CR chest
    model = medanomaly.create("vae-vlb")
    square, info = model.preprocess(film)
    assert square.shape == (100, 100)
    height, width = info.resized_shape
    assert height == 100 and abs(width / height - film.shape[1] / film.shape[0]) < 0.02
    rows, cols = info.valid_region()
    padding = np.ones_like(square, dtype=bool)
    padding[rows, cols] = False
    assert padding.any() and np.all(square[padding] == square.min())
    plain, _ = resize_keep_aspect(film, 100)
    assert np.all(plain[padding] == film.min())


def test_vlb_vae_trains_and_scores_negative_elbo(kermany_films):
    films = [read_image(path) for path in kermany_films["NORMAL"][:8]]
    model = medanomaly.create("vae-vlb", batch_size=4, epochs=2, device="cpu", learning_rate=1e-4)
    history = model.fit(films, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)

    pneumonia = read_image(kermany_films["PNEUMONIA"][0])
    result = model.predict(pneumonia)
    assert result.map.shape == pneumonia.shape and np.all(result.map >= 0)
    assert result.meta["vlb_samples"] == 3 and result.meta["options"] == {"vlb_samples": 3}
    # -VLB = reconstruction term over the 100^2 square + KL >= the reconstruction term alone
    square, _ = model.preprocess(pneumonia.array)
    x = torch.as_tensor(square)[None, None]
    vlb, pixel_terms = model.negative_vlb(x, torch.Generator().manual_seed(0))
    assert float(vlb[0]) >= float(pixel_terms.sum()) - 1e-3
    assert result.score == pytest.approx(float(vlb[0]), rel=1e-5)  # same seed, same draws
    assert model.predict(pneumonia).score == pytest.approx(result.score)  # deterministic per request
    one_draw = model.predict(pneumonia, vlb_samples=1).score
    assert one_draw != pytest.approx(result.score, rel=1e-7)  # a different Monte Carlo estimate
    with pytest.raises(ValueError):
        model.predict(pneumonia, vlb_samples=0)
