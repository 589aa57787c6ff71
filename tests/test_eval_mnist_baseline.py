"""Raw-pixel baselines on mnist5k reproduce DESIGN §12 (standard split, standard metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from store.datasets import open_dataset
from student_trainer.eval import metrics
from student_trainer.eval.evaluate import sklearn_l2_knn
from student_trainer.eval.features import FeatureSet, PixelFeatures, extract_features
from student_trainer.eval.knn import search


@pytest.fixture(scope="module")
def pixels() -> FeatureSet:
    ds = open_dataset("mnist5k")
    fs = extract_features(PixelFeatures(), ds, progress=False, use_cache=False)
    assert fs.train.features.shape == (4000, 28 * 28 * 3)
    assert fs.test.features.shape == (1000, 28 * 28 * 3)
    assert fs.train.features.min() == 0.0 and fs.train.features.max() == 1.0
    np.testing.assert_array_equal(
        fs.test.indices, np.random.RandomState(0).permutation(5000)[4000:]
    )
    return fs


def test_raw_pixel_euclidean_20nn_is_0911(pixels: FeatureSet) -> None:
    assert sklearn_l2_knn(pixels, 20) == pytest.approx(0.911, abs=0.005)


def test_raw_pixel_cosine_metrics_match_design(pixels: FeatureSet) -> None:
    nb = search(pixels.train.features, pixels.test.features, 20)
    lab = pixels.train.labels[nb.indices]
    truth = pixels.test.labels
    weighted = metrics.accuracy(metrics.weighted_knn_predict(lab, nb.similarities, 20, 0.07), truth)
    assert weighted == pytest.approx(0.940, abs=0.0005)
    assert metrics.accuracy(metrics.majority_predict(lab, 20), truth) == pytest.approx(
        0.929, abs=5e-4
    )
    assert metrics.accuracy(metrics.majority_predict(lab, 1), truth) == pytest.approx(
        0.946, abs=5e-4
    )
