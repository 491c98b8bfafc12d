"""The "ddpm" diffusion anomaly model on real mammograms (mini-MIAS), with a tiny network trained a few steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

import medanomaly
from medanomaly.inferers.diffusion import ddim_reverse, ddim_timesteps, ddpm_reverse, make_schedulers, noise_to_step
from medanomaly.errors import UnsupportedImageError
from medanomaly.io import read_image
from medanomaly.preprocess import foreground_mask, resize_keep_aspect, to_unit_range

TINY = {"image_size": 32, "channels": [8, 16, 16], "norm_num_groups": 8, "num_head_channels": 8,
        "learning_rate": 1e-3, "batch_size": 8, "seed": 0,
        # calibration inside fit() predicts every validation film: the fast path keeps that cheap
        "fast": True, "fast_repeats": 1, "ddim_steps": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mammograms(data_root):
    """Normal films mdb003/mdb004 (one woman) and mdb005/mdb006 to train; mdb007 held out (all normal)."""
    folder = data_root / "mini_mias" / "images"
    return {name: read_image(folder / f"{name}.png") for name in ("mdb003", "mdb004", "mdb005", "mdb006", "mdb007")}


@pytest.fixture(scope="module")
def trained(mammograms):
    """Patch-mode model trained 3 epochs on 4 tissue patches of each of 4 normal films."""
    model = medanomaly.create("ddpm", mode="patch", max_train_patches_per_image=4, epochs=3, **TINY)
    train = [mammograms[name] for name in ("mdb003", "mdb004", "mdb005", "mdb006")]
    model.fit(train, progress=False)
    return model


@pytest.fixture(scope="module")
def tissue_crop(mammograms):
    """A 144 px crop of the held-out film, mostly breast tissue, in [0, 1]."""
    unit = to_unit_range(mammograms["mdb007"].array)[0]
    tissue = foreground_mask(unit)
    rows, cols = np.nonzero(tissue)
    row, col = int(np.median(rows)) - 72, int(np.median(cols)) - 72
    crop = unit[row:row + 144, col:col + 144]
    assert tissue[row:row + 144, col:col + 144].mean() > 0.9
    return crop


def test_noising_matches_q_statistics(tissue_crop):
    ddpm, _ = make_schedulers(1000)
    x0 = torch.as_tensor(resize_keep_aspect(tissue_crop, 16)[0] * 2 - 1)[None, None]
    draws, step = 4000, 300
    generator = torch.Generator().manual_seed(1)
    x_t = noise_to_step(ddpm, x0.repeat(draws, 1, 1, 1), torch.full((draws,), step), generator)
    alpha_bar = float(ddpm.alphas_cumprod[step])
    expected_mean = np.sqrt(alpha_bar) * x0[0, 0].numpy()
    mean, var = x_t[:, 0].mean(0).numpy(), x_t[:, 0].var(0).numpy()
    standard_error = np.sqrt((1 - alpha_bar) / draws)
    assert np.abs(mean - expected_mean).max() < 5 * standard_error
    assert abs(var.mean() - (1 - alpha_bar)) < 0.02 * (1 - alpha_bar)
    # Each sample at its own step: a step-0 sample keeps nearly all of the image, a step-999 one nearly none.
    pair = noise_to_step(ddpm, x0.repeat(2, 1, 1, 1), torch.tensor([0, 999]), generator)
    assert (pair[0] - x0[0]).abs().mean() < 0.02
    assert abs(float(torch.corrcoef(torch.stack([pair[1].flatten(), x0.flatten()]))[0, 1])) < 0.3


def test_partial_ddim_step_matches_monai_uniform_stride():
    """With a stride MONAI can express (T / 100 = 10), the explicit-step DDIM equals DDIMScheduler.step."""
    _, partial = make_schedulers(1000)
    monai_ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=True, set_alpha_to_one=True)
    monai_ddim.set_timesteps(100)
    generator = torch.Generator().manual_seed(0)
    sample, epsilon = torch.randn(3, 1, 8, 8, generator=generator), torch.randn(3, 1, 8, 8, generator=generator)
    expected, _ = monai_ddim.step(epsilon, 500, sample)
    got, _ = partial.step_to(epsilon, torch.full((3,), 500), torch.full((3,), 490), sample)
    assert torch.allclose(got, expected, atol=1e-5)


def test_reverse_loops_return_input_shape(trained):
    ddpm, ddim = make_schedulers(1000)
    x_t = torch.rand(3, 1, 32, 32) * 2 - 1
    starts = torch.tensor([4, 0, 9])
    out, evaluations = ddpm_reverse(trained.network.eval(), ddpm, x_t, starts, torch.Generator().manual_seed(0))
    assert out.shape == x_t.shape and evaluations == int((starts + 1).sum())
    out, evaluations = ddim_reverse(trained.network, ddim, x_t, torch.full((3,), 500), steps=4)
    assert out.shape == x_t.shape and evaluations == 12
    schedule = ddim_timesteps(torch.tensor([500]), 4)[0].tolist()
    assert schedule == [500, 375, 250, 125, -1]  # K evaluations from t0, ending at the clean image


def test_nlr_extremes_small_versus_large_residual(trained, tissue_crop):
    trained.config["mode"] = "whole"  # the crop scored as one image
    try:
        near_input = trained.predict(tissue_crop, fast=True, t0=1, ddim_steps=1, fast_repeats=2)
        # (the DDPM reverse from step 999 costs 1000 network calls: the start step, not the sampler, is tested here)
        generated = trained.predict(tissue_crop, fast=False, sampler="ddim", ddim_steps=10, nlr=1000, repeats=2)
        anywhere = trained.predict(tissue_crop, fast=False, sampler="ddim", ddim_steps=1, nlr=0, repeats=10)
        above = trained.predict(tissue_crop, fast=False, sampler="ddim", ddim_steps=1, nlr=600, repeats=10)
    finally:
        trained.config["mode"] = "patch"
    # Start step forced near 0: the reconstruction is nearly the input.
    assert near_input.score < 0.05
    # NLR = T: every repeat starts at the last step, from (almost) pure noise: generation, not reconstruction.
    assert generated.meta["start_steps"] == [999, 999]
    assert generated.score > 4 * near_input.score
    assert 0 <= min(anywhere.meta["start_steps"]) < 500 < max(anywhere.meta["start_steps"]) <= 999
    assert min(above.meta["start_steps"]) >= 600
    assert generated.extras["residual_std"].shape == tissue_crop.shape
    assert np.isclose(np.std(generated.meta["repeat_scores"]), generated.meta["score_std"])


def test_paper_protocol_steps_one_at_a_time(tissue_crop):
    """The paper's DDPM reverse: random start steps in [nlr, T - 1], start + 1 network evaluations each.
    A 50-step schedule keeps the step-by-step loop short enough for a test."""
    model = medanomaly.create("ddpm", mode="whole", num_train_timesteps=50, nlr=40,
                             **{**TINY, "fast": False})
    result = model.predict(tissue_crop, sampler="ddpm", repeats=3)
    starts = result.meta["start_steps"]
    assert len(starts) == 3 and all(40 <= t <= 49 for t in starts)
    assert result.meta["network_evaluations"] == sum(t + 1 for t in starts)
    assert result.map.shape == tissue_crop.shape and 0 <= result.map.min() and result.map.max() <= 1


def test_patch_mode_tissue_rule_and_stitching(trained, mammograms):
    film = mammograms["mdb007"].array
    result = trained.predict(film, fast=True, ddim_steps=1, fast_repeats=1)
    assert result.map.shape == film.shape and result.extras["residual_std"].shape == film.shape
    tissue = foreground_mask(to_unit_range(film)[0])
    size, corners = result.meta["patch_size"], result.meta["patch_corners"]
    fractions = [tissue[r:r + size, c:c + size].mean() for r, c in corners]
    assert len(corners) == result.meta["n_patches"] > 0 and min(fractions) >= 0.4
    assert not result.meta["tissue_rule_fallback"]
    covered = np.zeros(film.shape, bool)
    for r, c in corners:
        covered[r:r + size, c:c + size] = True
    assert covered.mean() < 0.9  # the background patches were left out...
    assert np.all(result.map[~covered] == 0) and result.map[covered].mean() > 0  # ...and the map is stitched
    assert result.score == pytest.approx(max(result.meta["patch_scores"]))
    assert result.meta["score_mean"] == pytest.approx(np.mean(result.meta["patch_scores"]))
    assert result.meta["network_evaluations"] == len(corners)
    mean_scored = trained.predict(film, fast=True, ddim_steps=1, fast_repeats=1, patch_score="mean")
    assert mean_scored.score == pytest.approx(result.meta["score_mean"])


def test_training_samples_respect_tissue_rule(trained, mammograms):
    class Item:
        image = mammograms["mdb003"]

    samples = trained.training_samples(Item())
    assert len(samples) == 4 and samples[0][0].shape == (1, 32, 32)
    assert all(0 <= s[0].min() and s[0].max() <= 1 for s in samples)


def test_bad_settings_get_clear_errors(trained, mammograms):
    with pytest.raises(ValueError, match="mode"):
        medanomaly.create("ddpm", mode="cube", **TINY)
    with pytest.raises(ValueError, match="nlr"):
        trained.predict(mammograms["mdb007"], nlr=2000)
    with pytest.raises(ValueError, match="cannot be set per request"):
        trained.predict(mammograms["mdb007"], mode="whole")
    with pytest.raises(UnsupportedImageError, match="patch_size"):
        trained.predict(np.random.default_rng(0).random((100, 100), dtype=np.float32))


def test_checkpoint_round_trip_and_resume(trained, mammograms, tmp_path):
    path = trained.save(tmp_path / "ddpm.pt")
    loaded = medanomaly.load(path)
    assert loaded.model_version == trained.model_version
    film = mammograms["mdb007"]
    assert loaded.predict(film).score == pytest.approx(trained.predict(film).score)  # seeded noise: the same map

    checkpoint = tmp_path / "resume.pt"
    first = medanomaly.create("ddpm", mode="whole", epochs=1, **TINY)
    first.fit([mammograms["mdb003"], mammograms["mdb004"]], checkpoint=checkpoint, progress=False)
    resumed = medanomaly.create("ddpm", mode="whole", epochs=2, **TINY)
    history = resumed.fit([mammograms["mdb003"], mammograms["mdb004"]], checkpoint=checkpoint, progress=False)
    assert [record["epoch"] for record in history] == [1, 2]
