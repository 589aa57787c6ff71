"""Demo-scale check of the batched renderer: the quick demo's DisCo student trained from the same
store twice, once with each renderer, evaluated by the demo's own code.

Stage 1 is ``disco demo --quick`` restricted to the ``disco`` student with the reference renderer
(precompute, verify, train, evaluate); stage 2 trains the identical student config from that store
with ``renderer="batched"`` (DataLoader workers only decode, the loop renders) and evaluates it the
same way. On CPU the renders are byte-identical, so the two students should be equal to the bit;
on CUDA they may differ within seed noise. Last line: one JSON object with both students' weighted
kNN, their difference and whether the final weights are identical.

    python bench/render_demo.py --out runs/render-demo      # ~2 x the quick demo's student stage
    python bench/render_demo.py --out runs/render-demo --reuse   # stage 2 only, after stage 1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from student_trainer.demo.config import DemoConfig
from student_trainer.demo.pipeline import run_demo
from student_trainer.eval.evaluate import evaluate
from student_trainer.eval.features import EncoderFeatures
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/render-demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep a finished stage 1 under --out (its store and reference student) and run only\n"
        "stage 2; both students are then evaluated by one evaluate() call",
    )
    return p.parse_args()


def _knn(records: list[dict[str, object]], name: str) -> float:
    for r in records:
        if r.get("name") == name and "knn_weighted" in r:
            return float(r["knn_weighted"])  # type: ignore[arg-type]
    raise SystemExit(f"no kNN figure for {name!r} in {records}")


def main() -> None:
    a = _args()
    out = Path(a.out)
    t0 = time.perf_counter()
    demo = DemoConfig(
        out=str(out / "reference"), quick=True, methods=("disco",), workers=a.workers,
        device=a.device, progress=False, extra={"renderer": "reference"},
    )  # fmt: skip
    ref_deployed = out / "reference" / "students" / "disco-s0" / "deployed.pt"
    reuse = a.reuse and ref_deployed.is_file()
    ref_records = [] if reuse else run_demo(demo).records
    t_ref = time.perf_counter() - t0
    saved = json.loads((out / "reference" / "students" / "disco-s0" / "config.json").read_text())
    cfg = TrainConfig(**{**saved, "out": str(out / "batched" / "disco-s0"), "renderer": "batched"})
    cfg = replace(cfg, resume=False)
    t1 = time.perf_counter()
    result = train(cfg)
    t_bat_train = time.perf_counter() - t1
    deployed = str(Path(cfg.out) / "deployed.pt")
    models = [EncoderFeatures(deployed, size=demo.size, device=a.device, name="disco student")]
    if reuse:  # the reference student, evaluated the same way in the same call
        models.append(
            EncoderFeatures(ref_deployed, size=demo.size, device=a.device, name="reference")
        )
    records = evaluate(
        models,
        demo.dataset,
        size=demo.size,
        device=a.device,
        out=out / "batched",
        pixels=False,
        figures=False,
        progress=False,
    )
    ref_sd = torch.load(ref_deployed, weights_only=True)
    bat_sd = torch.load(deployed, weights_only=True)
    ref_sd = ref_sd.get("state_dict", ref_sd) if isinstance(ref_sd, dict) else ref_sd
    bat_sd = bat_sd.get("state_dict", bat_sd) if isinstance(bat_sd, dict) else bat_sd
    same = all(torch.equal(v, bat_sd[k]) for k, v in ref_sd.items() if isinstance(v, torch.Tensor))
    knn_ref = _knn(records, "reference") if reuse else _knn(ref_records, "disco student")
    knn_bat = _knn(records, "disco student")
    line = {
        "bench": "render_demo",
        "device": a.device,
        "knn_reference": knn_ref,
        "knn_batched": knn_bat,
        "knn_diff": round(knn_bat - knn_ref, 6),
        "weights_identical": same,
        "steps": result.steps,
        "reference_demo_s": None if reuse else round(t_ref, 1),
        "batched_train_s": round(t_bat_train, 1),
    }
    print(f"disco student weighted kNN: reference {knn_ref:.4f}, batched {knn_bat:.4f}")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
