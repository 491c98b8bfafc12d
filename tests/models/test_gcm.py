"""Generative Contribution Mappings on real NIH chest films: the score is the mean of the contribution map,
maps come back on the input's grid, the pretrained encoder stays frozen (or fine-tunes when asked), classes are
balanced by undersampling, a local encoder weights file loads, and training lowers the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medanomaly
from medanomaly.data.builders import BUILDERS
from medanomaly.data.manifest import load_case, read_manifest
from medanomaly.errors import CheckpointError
from medanomaly.methods.gcm import class_slug
from medanomaly.nets.pretrained_encoder import packaged_weights_path

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


def test_local_encoder_weights_load_by_config_path(tmp_path):
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    state["_conv_stem.weight"] = 2 * state["_conv_stem.weight"]  # another Lite0 weights file, told apart by its stem
    path = tmp_path / "lite0_other.pth"
    torch.save(state, path)

    packaged = medanomaly.create("gcm", image_size=32).network.encoder.network._conv_stem.weight
    local = medanomaly.create("gcm", image_size=32, encoder_weights=str(path)).network.encoder.network._conv_stem.weight
    assert torch.equal(local, state["_conv_stem.weight"]) and torch.equal(local, 2 * packaged)
    with pytest.raises(CheckpointError, match="does not exist"):
        medanomaly.create("gcm", image_size=32, encoder_weights=str(tmp_path / "missing.pt"))
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(CheckpointError, match="not EfficientNet-Lite0 weights"):
        medanomaly.create("gcm", image_size=32, encoder_weights=str(tmp_path / "unrelated.pt"))


def test_only_the_decoder_trains_unless_the_encoder_is_fine_tuned(nih_train):
    for fine_tune in (False, True):
        model = medanomaly.create("gcm", image_size=32, seed=0, fine_tune_encoder=fine_tune, optimizer="adam",
                                  learning_rate=1e-3)
        items = model.select_training_items(nih_train)
        x = torch.as_tensor(np.stack([model.training_samples(item)[0][0] for item in items]))
        y = torch.as_tensor(np.stack([model.training_samples(item)[0][1] for item in items]))
        encoder_before = {k: v.clone() for k, v in model.network.encoder.state_dict().items()}
        decoder_before = {k: v.clone() for k, v in model.network.decoder.state_dict().items()}
        optimizer = model.make_optimizer()
        model.network.train()
        assert model.network.encoder.training == fine_tune  # frozen: BatchNorm keeps the ImageNet statistics
        for _ in range(2):
            loss = model.training_loss(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        encoder_same = all(torch.equal(v, encoder_before[k]) for k, v in model.network.encoder.state_dict().items())
        assert encoder_same != fine_tune
        assert any(not torch.equal(v, decoder_before[k]) for k, v in model.network.decoder.state_dict().items())


def test_classes_are_balanced_by_undersampling(nih_train):
    unbalanced = nih_train + nih_train[:2]  # four No Finding films, two of each other class
    model = medanomaly.create("gcm", image_size=32)
    chosen = model.select_training_items(unbalanced)
    assert model.class_counts == {name: 2 for name in NIH_CLASSES} and len(chosen) == 8
    assert model.class_weights is None
    weighted = medanomaly.create("gcm", image_size=32, class_balance="weights")
    assert len(weighted.select_training_items(unbalanced)) == 10
    assert weighted.class_weights[0] < weighted.class_weights[1]  # the larger class counts less
    with pytest.raises(ValueError, match="class_balance"):
        medanomaly.create("gcm", class_balance="oversample").select_training_items(nih_train)


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
    batchnorm = model.network.decoder[0].adn.N  # the decoder's first BatchNorm
    encoder_before = {k: v.clone() for k, v in model.network.encoder.state_dict().items()}
    seen = []
    handle = batchnorm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    model.refresh_batchnorm(nih_train)  # one batch holding all eight films
    handle.remove()
    assert len(seen) == 1 and seen[0].shape[0] == len(nih_train)
    assert torch.allclose(batchnorm.running_mean, seen[0].mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert torch.allclose(batchnorm.running_var, seen[0].var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    assert not model.network.training
    # The frozen encoder keeps its ImageNet BatchNorm statistics.
    assert all(torch.equal(v, encoder_before[k]) for k, v in model.network.encoder.state_dict().items())


def test_checkpoint_holds_the_decoder_and_rebuilds_the_frozen_encoder(nih_train, tmp_path):
    model = medanomaly.create("gcm", image_size=32, epochs=1, batch_size=8, num_workers=0)
    model.fit(nih_train, val=nih_train, progress=False)
    model.save(tmp_path / "gcm.pt")
    stored = torch.load(tmp_path / "gcm.pt", map_location="cpu", weights_only=True)
    assert stored["state_dict"] and not any(key.startswith("encoder.") for key in stored["state_dict"])
    assert stored["stats"]["encoder"]["sha256"] == model.network.encoder.weights_sha256
    loaded = medanomaly.load(tmp_path / "gcm.pt")
    film = nih_train[1].image.array
    assert loaded.predict(film).score == pytest.approx(model.predict(film).score, rel=1e-5)
    assert np.allclose(loaded.predict(film).map, model.predict(film).map, rtol=1e-4, atol=1e-6)

    other = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    other["_conv_stem.weight"] = 2 * other["_conv_stem.weight"]
    torch.save(other, tmp_path / "lite0_other.pth")
    with pytest.raises(CheckpointError, match="encoder weights"):
        medanomaly.load(tmp_path / "gcm.pt", encoder_weights=str(tmp_path / "lite0_other.pth"))
    tuned = medanomaly.create("gcm", image_size=32, fine_tune_encoder=True)
    assert any(key.startswith("encoder.") for key in tuned.network.state_dict())  # a fine-tuned encoder is saved
