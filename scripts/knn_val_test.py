"""Weighted 20-NN of checkpoints on mnist5k's val and test splits, with the kNN monitor's code.

``val`` = the train split cut 80/20 (bank 3,200 / queries 800; the queries' images were seen,
unlabelled, by self-supervised training); ``test`` = bank train split / queries test split (the
figure ``disco eval`` reports). Also prints raw pixels (cosine) on both, as the floor.

    python scripts/knn_val_test.py student_trainer/assets/demo_teacher.pt runs/x/final.pt
"""

from __future__ import annotations

import argparse

import torch

from store.datasets import open_dataset
from student_trainer.eval.evaluate import score
from student_trainer.eval.features import PixelFeatures, extract_features
from student_trainer.eval.monitor import MONITOR_K, MONITOR_TEMPERATURE, KnnMonitor, MonitorData
from teacher_service.checkpoint import load_encoder, read_checkpoint


def pixels(data: MonitorData) -> float:
    """Weighted 20-NN (fraction) of raw pixels (``disco eval``'s baseline row) on ``data``."""
    model = PixelFeatures()
    model.bind(data)
    fs = extract_features(model, data, progress=False, use_cache=False)
    scores, _ = score(fs, MONITOR_K, MONITOR_TEMPERATURE, "faiss", "cpu")
    value = scores["knn_weighted"]
    assert value is not None
    return float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--dataset", default="mnist5k")
    args = parser.parse_args()
    base = open_dataset(args.dataset)
    for split in ("val", "test"):
        print(f"raw pixels  {split:4s}  {100 * pixels(MonitorData.held_out(base, split)):.2f}")
    for path in args.checkpoints:
        encoder = load_encoder(path).encoder.float()
        preprocessing = read_checkpoint(path)["preprocessing"]
        for split in ("val", "test"):
            monitor = KnnMonitor.create(args.dataset, split, preprocessing, torch.device("cpu"))
            record = monitor.evaluate(encoder)
            print(f"{path}  {split:4s}  {100 * record['knn_weighted']:.2f}")


if __name__ == "__main__":
    main()
