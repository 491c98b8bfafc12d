"""Metrics against values worked out by hand and against brute force."""
import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medanomaly.metrics import (
    best_dice,
    dice,
    dice_at_threshold,
    image_auprc,
    image_auroc,
    normal_percentile_threshold,
    pixel_auprc,
    pixel_auroc,
    summarize,
    youden_threshold,
)

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_image_auroc_by_hand():
    # Pairs (abnormal, normal): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4 pairs ranked right.
    assert image_auroc(LABELS, SCORES) == pytest.approx(0.75)


def test_image_auprc_by_hand():
    # Ranked: 0.8 (abn) precision 1 at recall .5; 0.4 (norm); 0.35 (abn) precision 2/3 at recall 1.
    assert image_auprc(LABELS, SCORES) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_single_class_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
        assert math.isnan(image_auprc([1, 1], [0.1, 0.2]))
        assert math.isnan(pixel_auroc([np.zeros((2, 2))], [np.ones((2, 2))]))


def test_youden_by_hand():
    labels = [0, 0, 0, 1, 1, 1, 1]
    values = [0.1, 0.2, 0.55, 0.5, 0.6, 0.7, 0.9]
    # t=0.6: 3 of 4 abnormal >= t, no normal >= t -> J = 0.75, the best (t=0.5 gives 1 - 1/3).
    result = youden_threshold(labels, values)
    assert result.threshold == pytest.approx(0.6)
    assert result.sensitivity == pytest.approx(0.75)
    assert result.specificity == pytest.approx(1.0)
    assert result.j == pytest.approx(0.75)


def test_youden_tie_goes_to_highest_threshold_and_never_infinite():
    # t=0.8 and t=0.35 both give J = 0.5; the higher one is kept.
    result = youden_threshold(LABELS, SCORES)
    assert result.threshold == pytest.approx(0.8)
    assert (result.sensitivity, result.specificity) == pytest.approx((0.5, 1.0))
    assert math.isfinite(result.threshold)


def test_youden_needs_both_classes():
    with pytest.raises(ValueError):
        youden_threshold([0, 0], [0.1, 0.2])


def test_normal_percentile_threshold():
    values = np.arange(101, dtype=float)  # quantile 0.95 of 0..100 is 95
    assert normal_percentile_threshold(values, fpr=0.05) == pytest.approx(95.0)
    threshold = normal_percentile_threshold(np.random.default_rng(0).normal(size=10_000), fpr=0.1)
    assert threshold == pytest.approx(1.2816, abs=0.05)  # the normal distribution's 90th percentile


def test_dice_by_hand():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    true = np.array([[1, 0, 0], [1, 0, 0]])
    assert dice(pred, true) == pytest.approx(2 * 1 / (2 + 2))
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice(np.ones((3, 3)), np.zeros((3, 3))) == 0.0


def test_dice_at_threshold_pools_cases():
    masks = [np.array([[1, 0], [0, 0]]), np.array([[0, 0], [1, 1]])]
    maps = [np.array([[0.9, 0.8], [0.1, 0.1]]), np.array([[0.1, 0.1], [0.7, 0.2]])]
    # map >= 0.5: case 1 predicts 2 pixels (1 hit), case 2 predicts 1 (1 hit); P = 3, PP = 3, TP = 2.
    assert dice_at_threshold(masks, maps, 0.5) == pytest.approx(2 * 2 / (3 + 3))
    roi = [np.array([[1, 0], [1, 1]]), np.ones((2, 2))]  # hides case 1's false positive
    assert dice_at_threshold(masks, maps, 0.5, roi=roi) == pytest.approx(2 * 2 / (3 + 2))


def _brute_force_best_dice(masks, maps, roi):
    y = np.concatenate([(m > 0)[r.astype(bool)] for m, r in zip(masks, roi)])
    v = np.concatenate([a[r.astype(bool)] for a, r in zip(maps, roi)])
    best = (-1.0, None)
    for t in np.unique(v)[::-1]:  # high to low, so ties keep the highest threshold
        predicted = v >= t
        score = 2 * np.sum(predicted & y) / (y.sum() + predicted.sum())
        if score > best[0]:
            best = (score, t)
    return best


def test_best_dice_matches_brute_force():
    rng = np.random.default_rng(1)
    masks = [rng.random((12, 9)) > 0.7 for _ in range(3)]
    # Rounded so that many pixels share a value: ties must be handled as one threshold.
    maps = [np.round(m * 0.5 + rng.random(m.shape), 1) for m in masks]
    roi = [rng.random(m.shape) > 0.2 for m in masks]
    expected_dice, expected_threshold = _brute_force_best_dice(masks, maps, roi)
    got_dice, got_threshold = best_dice(masks, maps, roi=roi)
    assert got_dice == pytest.approx(expected_dice)
    assert got_threshold == pytest.approx(expected_threshold)
    assert dice_at_threshold(masks, maps, got_threshold, roi=roi) == pytest.approx(got_dice)


def test_best_dice_without_lesion_predicts_nothing():
    value, threshold = best_dice([np.zeros((3, 3))], [np.arange(9.0).reshape(3, 3)])
    assert value == 1.0 and threshold > 8.0


def test_pixel_auroc_restricted_to_roi_and_subsampled_deterministically():
    rng = np.random.default_rng(2)
    masks = [rng.random((40, 50)) > 0.8 for _ in range(2)]
    maps = [m + rng.normal(scale=0.8, size=m.shape) for m in masks]
    roi = [rng.random(m.shape) > 0.3 for m in masks]
    y = np.concatenate([m[r] for m, r in zip(masks, roi)])
    v = np.concatenate([a[r] for a, r in zip(maps, roi)])
    assert pixel_auroc(masks, maps, roi=roi) == pytest.approx(roc_auc_score(y, v))
    sub = pixel_auroc(masks, maps, roi=roi, max_pixels=1000, seed=3)
    assert sub == pixel_auroc(masks, maps, roi=roi, max_pixels=1000, seed=3)
    assert sub == pytest.approx(roc_auc_score(y, v), abs=0.05)
    assert 0.0 < pixel_auprc(masks, maps, roi=roi) <= 1.0


def test_pixel_metrics_accept_volumes():
    mask = np.zeros((2, 3, 3))
    mask[1, 1, 1] = 1
    amap = mask * 2.0 + 0.5
    assert pixel_auroc([mask], [amap]) == 1.0
    assert best_dice([mask], [amap]) == (1.0, 2.5)


def test_summarize_is_plain_json():
    masks = [None, None, np.array([[1, 0], [0, 0]]), np.array([[0, 1], [0, 0]])]
    maps = [np.full((2, 2), 0.1), np.full((2, 2), 0.2), np.array([[0.9, 0.1], [0.1, 0.1]]),
            np.array([[0.2, 0.8], [0.1, 0.3]])]
    result = summarize(LABELS, SCORES, masks=masks, maps=maps, threshold=0.5, pixel_threshold=0.5)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result

    def plain(value):
        if isinstance(value, dict):
            return all(plain(v) for v in value.values())
        return type(value) in (int, float)

    assert plain(result)
    assert result["n_normal"] == 2 and result["n_abnormal"] == 2
    assert result["image_auroc"] == pytest.approx(0.75)
    assert result["youden"]["threshold"] == pytest.approx(0.8)
    assert result["at_threshold"] == pytest.approx({"threshold": 0.5, "sensitivity": 0.5, "specificity": 1.0})
    # Lesion pixels 0.9 and 0.8 are above every normal pixel (normal cases' missing masks count as empty).
    assert result["pixel_auroc"] == pytest.approx(1.0)
    assert result["best_dice"] == 1.0
    assert result["dice_at_threshold"] == 1.0


def test_summarize_single_class_gives_nan():
    result = summarize([0, 0], [0.1, 0.2])
    assert math.isnan(result["image_auroc"]) and math.isnan(result["youden"]["threshold"])


def test_summarize_accepts_preselected_pixel_cases():
    masks = [np.array([[1, 0], [0, 0]])]
    maps = [np.array([[0.9, 0.1], [0.1, 0.1]])]
    result = summarize(LABELS, SCORES, masks=masks, maps=maps)
    assert result["best_dice"] == 1.0 and result["best_dice_threshold"] == pytest.approx(0.9)
