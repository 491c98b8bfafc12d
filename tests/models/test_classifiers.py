"""The supervised classifier base on real chest films: labels, class weights, P(abnormal) score, Grad-CAM maps,
and the DenseNet-121 and small-CNN classifiers through fit / predict / save / load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medanomaly
from medanomaly.data.builders import BUILDERS
from medanomaly.data.manifest import load_case, read_manifest
from medanomaly.errors import ManifestError
from medanomaly.io import read_image

NIH_CLASSES = ["No Finding", "Cardiomegaly", "Pneumothorax", "Effusion"]


@pytest.fixture(scope="module")
def nih_manifests(data_root, tmp_path_factory):
    return BUILDERS["nih"](data_root, tmp_path_factory.mktemp("nih"))


@pytest.fixture(scope="module")
def kermany_items(kermany_films):
    """Four normal and four pneumonia films, labelled 0 / 1 as in the Kermany manifests."""
    from types import SimpleNamespace

    return [SimpleNamespace(image=read_image(path), mask=None, roi=None, label=label, is_abnormal=bool(label))
            for label, folder in ((0, "NORMAL"), (1, "PNEUMONIA")) for path in kermany_films[folder][:4]]


def test_labels_map_to_classes():
    model = medanomaly.create("densenet121", image_size=32)
    assert model.class_index("Cardiomegaly") == 1 and model.class_index("effusion") == 3
    assert model.class_index("no finding") == 0 and model.class_index(0) == 0
    assert model.class_index("Cardiomegaly|Effusion") is None  # multi-label: not a training target
    with pytest.raises(ManifestError):
        model.class_index(1)  # which of three abnormal classes? ambiguous
    with pytest.raises(ManifestError):
        model.class_index("Hernia")
    binary = medanomaly.create("cxr-cnn", classes=["pneumonia", "normal"], normal_class="normal")
    assert binary.class_index(1) == 0 and binary.class_index(0) == 1 and binary.abnormal_indices == [0]
    with pytest.raises(ValueError):
        medanomaly.create("cxr-cnn", classes=["normal", "Normal"])
    with pytest.raises(ValueError):
        medanomaly.create("cxr-cnn", normal_class="healthy")


def test_balanced_class_weights_from_the_nih_training_labels(nih_manifests):
    model = medanomaly.create("densenet121", image_size=32)
    train = read_manifest(nih_manifests["train"])
    val = read_manifest(nih_manifests["val"])
    chosen = model.select_training_items(train + val)  # the multi-label val films must drop out
    assert all("|" not in str(case.label) for case in chosen)
    counts = np.array([sum(str(c.label) == name for c in chosen) for name in NIH_CLASSES])
    assert counts.min() > 0 and len(set(counts.tolist())) > 1  # real, imbalanced data
    expected = counts.sum() / (4 * counts)
    assert np.allclose(model.class_weights.cpu().numpy(), expected)
    assert model.class_counts == dict(zip(NIH_CLASSES, counts.tolist()))
    # A rarer class weighs more.
    assert model.class_weights[int(np.argmin(counts))] == model.class_weights.max()


def test_gradcam_map_on_the_input_grid_and_not_constant(nih_manifests):
    case = next(c for c in read_manifest(nih_manifests["train"]) if c.label == "Cardiomegaly")
    film = load_case(case).image.array[30:480, :]  # a real film on a non-square grid
    model = medanomaly.create("densenet121", image_size=64)
    result = model.predict(film)
    assert result.map.shape == film.shape and result.map.dtype == np.float32
    assert np.all(np.isfinite(result.map)) and result.map.min() >= 0  # Grad-CAM keeps the positive part
    assert result.map.max() - result.map.min() > 1e-6 * max(1.0, abs(float(result.map.max())))
    probabilities = result.meta["class_probabilities"]
    assert list(probabilities) == NIH_CLASSES
    assert result.score == pytest.approx(1 - probabilities["No Finding"], abs=1e-6)
    # Grad-CAM needs gradients even when the caller turned them off.
    with torch.no_grad():
        again = model.predict(film)
    assert np.allclose(again.map, result.map, rtol=1e-4, atol=1e-8)


def test_small_cnn_fits_real_films_and_round_trips(kermany_items, tmp_path):
    model = medanomaly.create("cxr-cnn", classes=["normal", "pneumonia"], epochs=2, batch_size=4, seed=1)
    history = model.fit(kermany_items, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert model.class_counts == {"normal": 4, "pneumonia": 4}
    assert model.thresholds["image"] is not None and model.thresholds["pixel"] is not None
    film = kermany_items[-1].image
    result = model.predict(film)
    assert result.map.shape == film.shape
    assert result.score == pytest.approx(result.meta["class_probabilities"]["pneumonia"], abs=1e-6)
    assert result.map.max() > result.map.min()
    assert model.stats["training_class_counts"] == {"normal": 4, "pneumonia": 4}
    model.save(tmp_path / "cnn.pt")
    loaded = medanomaly.load(tmp_path / "cnn.pt")
    again = loaded.predict(film)
    assert again.score == pytest.approx(result.score, abs=1e-6)
    assert np.allclose(again.map, result.map, rtol=1e-4, atol=1e-8)


def test_training_needs_single_label_items(kermany_items):
    from types import SimpleNamespace

    model = medanomaly.create("densenet121", image_size=32)
    multi = [SimpleNamespace(image=kermany_items[0].image, mask=None, roi=None, label="Cardiomegaly|Effusion",
                             is_abnormal=True)]
    with pytest.raises(ValueError):
        model.fit(multi, progress=False)
