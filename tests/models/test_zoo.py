"""The shipped checkpoints (monailabel_app/zoo/): each loads, its file hash is the one its card states, the size
limits hold, every registered model has a card (a shipped one, or one that says why not), and re-scoring the card's
regression subset (a few fixed real images held out by patient) gives the card's scores and AUROC within the card's
stated tolerance. Altered weights fail that check (shown on the ae baseline)."""
from __future__ import annotations

import json

import medanomaly
import numpy as np
import pytest
import torch
from medanomaly import metrics, zoo
from medanomaly.base import as_items
from medanomaly.data.manifest import Case

ZOO = zoo.DEFAULT_ZOO
CARDS = {path.name[: -len(".card.json")]: json.loads(path.read_text(encoding="utf-8"))
         for path in sorted(ZOO.glob("*.card.json"))}
SHIPPED = sorted(name for name, card in CARDS.items() if card["shipped"])


def subset_scores(model, card, data_root) -> tuple[np.ndarray, np.ndarray, list[int]]:
    images = card["regression_subset"]["images"]
    cases = [Case(image=data_root / entry["image"], label=int(entry["abnormal"]),
                  slice=entry["slice"]) for entry in images]
    scores = np.array([model.predict(item.image).score for item in as_items(cases)])
    return scores, np.array([entry["score"] for entry in images]), [int(entry["abnormal"]) for entry in images]


def test_the_baseline_and_the_chest_feature_model_ship():
    assert "ae" in SHIPPED
    assert {"padim-chest", "patchcore-chest"} & set(SHIPPED), "a chest feature model must ship"


def test_every_registered_model_has_a_card_that_ships_or_says_why():
    assert sorted(CARDS) == medanomaly.list_models()
    for name, card in CARDS.items():
        assert card["summary"] and card["description"] == medanomaly.model_class(name).description
        if card["shipped"]:
            assert (ZOO / f"{name}.pt").is_file() and (ZOO / card["picture"]).is_file()
            assert (ZOO / f"{name}.card.md").read_text(encoding="utf-8").count(card["sha256"]) == 1
        else:
            assert not (ZOO / f"{name}.pt").exists()
            assert card["summary"].startswith("not shipped: ") and "POST /train" in card["reason"]


def test_size_limits():
    sizes = {path.name: path.stat().st_size / 2**20 for path in ZOO.glob("*.pt")}
    assert sizes and max(sizes.values()) <= zoo.MAX_FILE_MB and sum(sizes.values()) <= zoo.MAX_TOTAL_MB, sizes


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_and_matches_its_card(name):
    card = CARDS[name]
    path = ZOO / card["file"]
    assert zoo.file_sha256(path) == card["sha256"]
    model = medanomaly.load(path, device="cpu")
    assert model.name == name and model.model_version == card["model_version"]
    stored = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    floats = [v.dtype for v in stored.values() if torch.is_tensor(v) and v.is_floating_point()]
    assert set(floats) == {torch.float16 if card["precision"] == "float16" else torch.float32}
    assert model.thresholds["image"] == pytest.approx(card["figures"]["image_threshold"])
    licence = card["training_data"]["licence"]
    assert licence and ("research use only" in licence.lower()) == (card["training_data"]["dataset"] == "mini_mias")


@pytest.mark.parametrize("name", SHIPPED)
def test_rescoring_the_regression_subset_reproduces_the_card(name, data_root):
    card = CARDS[name]
    tolerance = card["regression_subset"]["tolerance"]
    model = medanomaly.load(ZOO / card["file"], device="cpu")
    scores, expected, labels = subset_scores(model, card, data_root)
    np.testing.assert_allclose(scores, expected, rtol=tolerance["score_rtol"])
    if card["regression_subset"]["image_auroc"] is not None:
        assert metrics.image_auroc(labels, scores) == pytest.approx(card["regression_subset"]["image_auroc"],
                                                                   abs=tolerance["auroc_abs"])


def test_altered_weights_fail_the_regression_check(data_root):
    """What the regression check is worth: the baseline with its weights nudged by 10 % no longer matches."""
    card = CARDS["ae"]
    model = medanomaly.load(ZOO / card["file"], device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.mul_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
    scores, expected, _ = subset_scores(model, card, data_root)
    assert np.max(np.abs(scores - expected) / np.abs(expected)) > card["regression_subset"]["tolerance"]["score_rtol"]


def test_half_precision_is_chosen_only_when_the_subset_scores_allow_it(tmp_path, data_root, monkeypatch):
    """The zoo halves a checkpoint only when no regression-subset score moves more than HALF_SCORE_RTOL. With
    the rule made exact (0): weights that half precision holds exactly ship halved; weights with detail below
    half precision ship in float32, and score as the float32 model does."""
    card = CARDS["ae"]
    subset = [Case(image=data_root / entry["image"], label=int(entry["abnormal"]), slice=entry["slice"])
              for entry in card["regression_subset"]["images"]]
    monkeypatch.setattr(zoo, "HALF_SCORE_RTOL", 0.0)
    model = medanomaly.load(ZOO / card["file"], device="cpu")
    model.save(tmp_path / "exact.pt")  # the shipped float16 weights, stored as float32
    (tmp_path / "exact").mkdir()
    written = zoo.write_shipped("ae", tmp_path / "exact.pt", subset, tmp_path / "exact", log=lambda _: None)
    assert written["precision"] == "float16" and written["half_precision_score_change"] == 0.0
    halved = torch.load(tmp_path / "exact" / "ae.pt", map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float16 for v in halved["state_dict"].values() if v.is_floating_point())
    assert halved["train_state"]["optimizer"] is None

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # relative detail of 1e-4, below float16's resolution of about 5e-4
        for parameter in model.network.parameters():
            parameter.mul_(1 + 1e-4 * torch.randn(parameter.shape, generator=generator))
    model.save(tmp_path / "fine.pt")
    (tmp_path / "fine").mkdir()
    written = zoo.write_shipped("ae", tmp_path / "fine.pt", subset, tmp_path / "fine", log=lambda _: None)
    assert written["precision"] == "float32" and written["half_precision_score_change"] > 0
    shipped = medanomaly.load(tmp_path / "fine" / "ae.pt", device="cpu")
    assert all(v.dtype == torch.float32 for v in shipped.network.state_dict().values() if v.is_floating_point())
    np.testing.assert_array_equal(subset_scores(shipped, card, data_root)[0], subset_scores(model, card, data_root)[0])
    assert not list((tmp_path / "fine").glob(".*"))  # the half-precision trial file is gone
