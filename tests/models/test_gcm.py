"""Generative Contribution Mappings on real NIH chest films: the score is the mean of the contribution map,
maps come back on the input's grid, a local EfficientNet-B0 weights file loads, and training lowers the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import EfficientNetBNFeatures

import medanomaly
from medanomaly.data.builders import BUILDERS
from medanomaly.data.manifest import load_case, read_manifest
from medanomaly.errors import CheckpointError
from medanomaly.methods.gcm import class_slug

NIH_CLASSES = ["No Finding", "Cardiomegaly", "Pneumothorax", "Effusion"]


@pytest.fixture(scope="module")
def nih_train(data_root, tmp_path_factory):
    """Two real training films of each of the four classes, loaded."""
    paths = BUILDERS["nih"](data_root, tmp_path_factory.mktemp("nih"))
    cases = read_manifest(paths["train"])
    chosen = [case for name in NIH_CLASSES for case in [c for c in cases if c.label == name][:2]]
    return [load_case(case) for case in chosen]


def test_logit_is_the_mean_of_the_contribution_map(nih_train):
    model = medanomaly.create("gcm", image_size=64)
    model.network.eval()
    x = torch.as_tensor(np.stack([model.preprocess(item.image.array)[0] for item in nih_train[:3]]))
    with torch.no_grad():
        logits, cwm = model.network(x)
        ccm = model.network.contribution_maps(x, cwm)
    assert cwm.shape == (3, 4, 64, 64) and ccm.shape == (3, 4, 3, 64, 64)
    assert float(cwm.min()) >= 0.0  # BatchNorm + ReLU on the last conv
    assert torch.allclose(ccm.mean(dim=(2, 3, 4)), logits, rtol=1e-5, atol=1e-7)
    assert torch.allclose(model.logits(x), logits)
    assert logits.std() > 0  # films differ, so do their scores


def test_maps_and_probabilities_on_the_input_grid(nih_train):
    model = medanomaly.create("gcm", image_size=64)
    film = nih_train[0].image.array[:, 40:440]  # a real film cut to a non-square grid
    result = model.predict(film)
    assert result.map.shape == film.shape and result.mask.shape == film.shape
    assert sorted(result.extras) == sorted(f"cwm_{class_slug(name)}" for name in NIH_CLASSES)
    assert all(cwm.shape == film.shape for cwm in result.extras.values())
    probabilities = result.meta["class_probabilities"]
    assert list(probabilities) == NIH_CLASSES
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.score == pytest.approx(1.0 - probabilities["No Finding"], abs=1e-6)
    # The server map is the abnormal CWMs weighted by their probabilities.
    expected = sum(probabilities[name] * result.extras[f"cwm_{class_slug(name)}"] for name in NIH_CLASSES[1:])
    assert np.allclose(result.map, expected, rtol=1e-4, atol=1e-6)
    assert result.map.std() > 0


def test_local_encoder_weights_load_by_config_path(nih_train, tmp_path):
    torch.manual_seed(123)
    source = EfficientNetBNFeatures("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3)
    path = tmp_path / "efficientnet_b0_features.pt"
    torch.save(source.state_dict(), path)

    model = medanomaly.create("gcm", image_size=32, encoder_weights=str(path), epochs=0, refresh_batchnorm=False)
    before = {k: v.clone() for k, v in model.network.encoder.state_dict().items()}
    model.fit(nih_train, progress=False)  # a fresh run loads the file named in the config, then calibrates
    report = model.encoder_weights_report
    encoder = model.network.encoder.state_dict()
    assert report["loaded"] == len(encoder) and report["missing_keys"] == []
    assert "_conv_head.weight" in report["unexpected_keys"]  # the stages after 16x16x112 are not used
    for key, value in encoder.items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert any(not torch.equal(before[k], encoder[k]) for k in encoder)  # the weights did change

    with pytest.raises(CheckpointError):
        medanomaly.create("gcm", image_size=32).load_encoder_weights(tmp_path / "missing.pt")
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(CheckpointError):
        medanomaly.create("gcm", image_size=32).load_encoder_weights(tmp_path / "unrelated.pt")


def test_a_few_training_steps_lower_the_loss_on_real_films(nih_train):
    model = medanomaly.create("gcm", image_size=64, seed=0)
    items = model.select_training_items(nih_train)  # also sets the balanced class weights
    samples = [s for item in items for s in model.training_samples(item)]
    x = torch.as_tensor(np.stack([s[0] for s in samples]))
    y = torch.as_tensor(np.stack([s[1] for s in samples]))
    assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    optimizer = model.make_optimizer()
    model.network.train()
    with torch.no_grad():
        before = float(model.training_loss(x, y))
    for _ in range(8):
        loss = model.training_loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model.training_loss(x, y))
    assert np.isfinite(after) and after < before


def test_batchnorm_statistics_are_refreshed_on_the_training_films(nih_train):
    model = medanomaly.create("gcm", image_size=32, batch_size=len(nih_train))
    batchnorm = model.network.encoder._bn0
    seen = []
    handle = batchnorm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    model.refresh_batchnorm(nih_train)  # one batch holding all eight films
    handle.remove()
    assert len(seen) == 1 and seen[0].shape[0] == len(nih_train)
    assert torch.allclose(batchnorm.running_mean, seen[0].mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert torch.allclose(batchnorm.running_var, seen[0].var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    assert batchnorm.momentum == pytest.approx(0.01) and not model.network.training
