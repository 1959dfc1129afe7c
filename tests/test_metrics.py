"""The metrics (discnb.grading.metrics): pixel metrics against scikit-learn, AUROC, KID."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, jaccard_score, precision_score,
                             recall_score, roc_auc_score)

from discnb import K
from discnb.data import image_metrics
from discnb.grading import metrics


def test_pixel_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    t = rng.integers(0, K, (5, 12, 12))
    p = np.where(rng.random(t.shape) < 0.6, t, rng.integers(0, K, t.shape))
    cm = metrics.confusion(t, p)
    labels = list(range(K))
    assert np.array_equal(cm, confusion_matrix(t.ravel(), p.ravel(), labels=labels))
    m = metrics.metrics_from_confusion(cm)
    np.testing.assert_allclose(m["precision"], precision_score(t.ravel(), p.ravel(), labels=labels, average=None))
    np.testing.assert_allclose(m["recall"], recall_score(t.ravel(), p.ravel(), labels=labels, average=None))
    np.testing.assert_allclose(m["iou"], jaccard_score(t.ravel(), p.ravel(), labels=labels, average=None))
    np.testing.assert_allclose(m["dice"], f1_score(t.ravel(), p.ravel(), labels=labels, average=None))
    assert m["pixel_accuracy"] == pytest.approx(accuracy_score(t.ravel(), p.ravel()))
    assert m["mean_iou"] == pytest.approx(jaccard_score(t.ravel(), p.ravel(), labels=labels, average="macro"))
    gg = p.ravel() > 0
    assert m["gg_precision_pooled"] == pytest.approx((p.ravel()[gg] == t.ravel()[gg]).mean())
    with pytest.raises(ValueError, match="pixels"):
        metrics.confusion(t, p[:2])


def test_undefined_metrics_are_nan_and_left_out_of_means():
    t = np.array([[0, 0, 1, 1]])
    p = np.array([[0, 1, 1, 1]])
    m = metrics.metrics_from_confusion(metrics.confusion(t, p))
    assert np.isnan(m["iou"][2]) and np.isnan(m["precision"][3])  # GG4/GG5: in neither truth nor prediction
    assert m["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_auroc_known_value_ties_and_one_class_labels():
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)  # all tied
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one class only: NaN, quietly (scikit-learn raises or warns there)
        assert math.isnan(metrics.auroc([1, 1, 1], [0.2, 0.3, 0.4])) and math.isnan(metrics.auroc([0, 0], [0.1, 0.9]))
    rng = np.random.default_rng(0)
    Y = rng.integers(0, 2, (30, K))
    Y[:, 0] = 0  # one class only: undefined, left out of the macro mean
    S = rng.random((30, K))
    sc = metrics.auroc_scores(Y, S)
    assert math.isnan(sc["NC"])
    assert sc["macro"] == pytest.approx(roc_auc_score(Y[:, 1:], S[:, 1:], average="macro"))
    Y[:] = 1
    assert math.isnan(metrics.auroc_scores(Y, S)["macro"])


def test_kid_is_about_zero_for_one_set_and_large_for_two_different_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    same = metrics.kid(x, x, subsets=20, subset_size=100, seed=1)
    also_same = metrics.kid(x, rng.normal(size=(400, 16)), subsets=20, subset_size=100, seed=1)  # same distribution
    other = metrics.kid(x, rng.normal(0.5, 1.3, size=(400, 16)), subsets=20, subset_size=100, seed=1)
    # unbiased: about 0 (within a few subset stds) for one distribution, whichever samples are compared
    assert abs(same[0]) < 3 * same[1] + 0.02 and abs(also_same[0]) < 3 * also_same[1] + 0.02
    assert other[0] > 1.0 and other[0] > 20 * max(abs(same[0]), abs(also_same[0]))
    assert metrics.kid(x, x, subsets=5, seed=3) == metrics.kid(x, x, subsets=5, seed=3)  # seeded
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kid(x[:1], x)


def test_psnr_and_ssim_of_identical_and_inverted_images():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    assert (image_metrics.psnr(imgs, imgs) > 90).all() and image_metrics.ssim(imgs, imgs) == pytest.approx(1.0)
    assert (image_metrics.psnr(imgs, 255 - imgs) < 10).all() and (image_metrics.ssim(imgs, 255 - imgs) < 0.5).all()
