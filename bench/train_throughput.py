"""Benchmark: what the cache costs a student run, against the baselines that isolate each cost.

One run, one student, one batch size, the same images (``--dataset``, ``mocov2`` recipe), the
same training loop (``student_trainer.train.loop``) and sampling; figures are medians of
``--repeats`` interleaved repeats (set-up and queue pre-fill excluded):

- ``disco_cached``: ``disco`` streaming its teacher targets from a zarr store built here by
  ``disco precompute``;
- ``disco_ram``: the same run with the same store read into RAM first (``--store-in-ram``,
  ``store.memory.InMemoryStore``): identical targets, views and order, no store reads;
- ``mocov2``: the student alone, from the dataset;
- ``disco_online``: ``disco`` with the same teacher run live (``--online-teacher``);
- ``lazy_fill``: ``disco`` from an empty store while a real ``disco serve`` on loopback fills
  the targets it lacks on demand (``--teacher-url``); epoch 1 is its first pass (every target
  fetched), epoch 2 the same run's second pass (now cached). ``--no-lazy-fill`` skips it.

The teacher is a randomly initialised encoder (weights do not change its cost) with at least
``--min-flops-ratio`` (10) x the student's FLOPs. Figures (last stdout line, one JSON object):

- ``read_cost_ratio`` = disco_cached / disco_ram samples/s: the cost of the store itself
  (goal >= 0.95). This and the other ratios are medians over repeats of the ratio within each
  repeat (``sps_repeats`` holds every run's figure): on a shared machine the load changes
  between repeats far more than within one;
- ``speedup_vs_online`` = disco_cached / disco_online, against ``predicted_speedup_vs_online``
  from FLOP counts: ``disco`` runs the student on both views with backward (~3x forward each)
  plus the key encoder on one view = 7 student forwards per image, online adds 2 teacher
  forwards, so the prediction is (7 F_s + 2 F_t) / (7 F_s); ``speedup_vs_prediction`` =
  measured / predicted;
- the step split that explains the gap (ms per step of each run: waiting for data, online teacher,
  the rest = student forward + backward + optimiser + queue) and the FLOP rates achieved in the
  runs (``run_teacher_gflop_s`` = 2 F_t B / teacher time; ``run_student_gflop_s`` = 7 F_s B /
  the cached run's non-data time), plus isolated rates of the same models on one batch
  (teacher forward in eval + inference mode; student forward in that mode, forward in train mode
  with grad, forward + backward) and the optimiser step time; the FLOP prediction assumes all
  of these run at the same FLOP rate;
- ``cache_overhead_ratio`` = disco_cached / mocov2, information only: ``mocov2`` does 4 student
  forwards per image to ``disco``'s 7, so even a free cache gives 4/7 by FLOPs
  (``predicted_cache_overhead_ratio``);
- ``lazy_fill_sps`` (first epoch, service filling), ``lazy_fill_cached_sps`` (second epoch),
  ``lazy_fill_vs_online`` = lazy_fill_sps / disco_online_sps.

    python bench/train_throughput.py                          # CPU, ~4 min on 2 quiet cores
    python bench/train_throughput.py --device cuda --batch 256 --size 64 --dataset synthetic:4096
    python bench/train_throughput.py --device cuda --precision bf16 --student resnet18 \
        --teacher resnet50 --teacher-width 64 --size 224 --batch 128 --workers 15 \
        --min-flops-ratio 2  # GPU host

Measured here (2 quiet cores, defaults; README "Benchmark: bench/train_throughput.py"):
read_cost_ratio 1.02 (zarr vs RAM planning 19 vs 11 ms per 1.6 s epoch), speedup_vs_online
2.22 against 4.47 predicted (0.50: the teacher's inference ran at 41 GFLOP/s, the student's
training step at 17, and rendering is 73 of the cached run's 193 ms per step), lazy fill 84.3
samples/s in epoch 1 (1.16x online: the service delivered 169 slots/s) and 197.7 in epoch 2.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from store.embedding_store import EmbeddingStore
from store.memory import InMemoryStore
from store.views import get_recipe
from student_trainer.train.config import TrainConfig
from student_trainer.train.data import StorePlan
from student_trainer.train.loop import TrainResult, train
from student_trainer.train.models import build_student, student_config
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute

RUNS = ("mocov2", "disco_cached", "disco_ram", "disco_online")


def forward_gflops(encoder: torch.nn.Module, size: int) -> float:
    """Forward FLOPs (2 x MACs) of one (3, size, size) image, in GFLOPs."""
    encoder.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def isolated_rates(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    f_t: float,
    f_s: float,
    size: int,
    batch: int,
    repeats: int = 5,
) -> dict[str, float]:
    """GFLOP/s of each model on one (batch, 3, size, size) batch, in the main process:
    ``teacher_fwd_eval`` (eval + inference mode, as the online teacher runs), ``student_fwd_eval``
    (the same mode), ``student_fwd_train`` (train mode, autograd recording), ``student_fwd_bwd``
    (3 F_s per image), and ``optimizer_ms`` (one SGD-momentum step over the student's weights)."""
    x = torch.randn(batch, 3, size, size)

    def infer(model: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model(x)

        return run

    def fwd_bwd() -> None:
        student.zero_grad(set_to_none=True)
        student(x).pow(2).sum().backward()

    teacher.eval()
    student.eval()
    out = {
        "teacher_fwd_eval": f_t * batch / _median_seconds(infer(teacher), repeats),
        "student_fwd_eval": f_s * batch / _median_seconds(infer(student), repeats),
    }
    student.train()
    out["student_fwd_train"] = f_s * batch / _median_seconds(lambda: student(x), repeats)
    out["student_fwd_bwd"] = 3 * f_s * batch / _median_seconds(fwd_bwd, repeats)
    fwd_bwd()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    out["optimizer_ms"] = 1000 * _median_seconds(opt.step, repeats)
    return {k: round(v, 2) for k, v in out.items()}


def plan_epoch_ms(store: str, batch: int, epochs: int = 3) -> dict[str, float]:
    """Main-process ms to plan one epoch of store batches (shard reads + fp16 -> fp32 +
    shuffle buffer + view choice), median of ``epochs``: from the zarr store (``zarr``) and from
    the same store in RAM (``ram``). The DataLoader runs this in the training process."""
    opened = EmbeddingStore.open(store)
    out = {}
    for name, source in (("zarr", opened), ("ram", InMemoryStore.load(opened))):
        plan = StorePlan(source, seed=0, batch=batch)
        times = []
        for epoch in range(epochs):
            start = time.perf_counter()
            for _ in plan.batches(epoch):
                pass
            times.append(1000 * (time.perf_counter() - start))
        out[name] = round(statistics.median(times), 2)
    return out


def spawn_service(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``disco serve ARGS`` (uvicorn) on a free loopback port; returns (process, URL) at
    once: it loads while the other runs train (:func:`wait_ready` waits for it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with open(log, "wb") as out:
        cmd = [sys.executable, "-m", "teacher_service.serve_cli", *args, "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Wait until the service's ``/healthz`` answers 200; exit with its log if it does not."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(
        f"disco serve did not become ready in {timeout:.0f} s:\n{log.read_text()[-2000:]}"
    )


def _fill_record(out: Path) -> dict[str, Any]:
    """The last step record of a run's ``log.jsonl`` (lazy fill logs ``fill_*`` counters)."""
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "lr" in r][-1]


def empty_store(store: str, root: Path, views: int) -> Path:
    """``root/lazy``: the full store's manifest and view plan with ``views`` per row, no teacher
    attached (the service attaches its teacher at the first write-through)."""
    full = EmbeddingStore.open(store)
    root.mkdir()
    EmbeddingStore.create(
        str(root / "lazy"), manifest=full.manifest, recipe=full.recipe, seed=full.seed,
        views=views, shard_size=full.shard_size,
    )  # fmt: skip
    return root / "lazy"


def lazy_fill(lazy_store: Path, url: str, work: Path, common: dict[str, Any]) -> dict[str, Any]:
    """DisCo from the empty ``lazy_store`` while the service at ``url`` fills the targets on
    demand: epoch 1 (every target fetched; no queue pre-fill, so nothing is fetched before the
    clock starts) and, resumed in the same run folder, epoch 2 (with V = 2 every pair of epoch
    2 was written in epoch 1). Returns both runs' results and their last ``fill_*`` counters."""
    kw = common | dict(method="disco", store=str(lazy_store), teacher_url=url)
    kw |= dict(prefill_queue=False, out=str(work / "lazy_fill"))
    spe = StorePlan(EmbeddingStore.open(str(lazy_store)), seed=0, batch=kw["batch_size"],
                    use_targets=False).steps_per_epoch  # fmt: skip
    first = train(TrainConfig(**(kw | dict(stop_at_step=spe))))
    fill1 = _fill_record(Path(kw["out"]))
    second = train(TrainConfig(**(kw | dict(stop_at_step=2 * spe, resume=True))))
    fill2 = _fill_record(Path(kw["out"]))
    return {"epoch1": first, "epoch2": second, "fill1": fill1, "fill2": fill2, "spe": spe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="tiny", help="student arch")
    parser.add_argument("--student-width", type=int, default=8)
    parser.add_argument("--teacher", default="resnet18", help="teacher arch")
    parser.add_argument("--teacher-width", type=int, default=20)
    parser.add_argument("--dataset", default="synthetic:256")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=40, help="timed steps of the store/mocov2 runs (5 epochs)"
    )
    parser.add_argument("--online-steps", type=int, default=4, help="timed steps, online run")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--queue", type=int, default=128, help="MoCo queue (pre-fill is untimed)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="compute precision of precompute and training (bf16/fp16: CUDA only)",
    )
    parser.add_argument(
        "--min-flops-ratio",
        type=float,
        default=10.0,
        help="refuse teachers with fewer x the student's FLOPs (ResNet-50/18 at 224 px: 2.3)",
    )
    parser.add_argument(
        "--lazy-fill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure lazy fill against a real `disco serve` on loopback",
    )
    parser.add_argument(
        "--lazy-views", type=int, default=2, help="V of the lazy-fill store (2: epoch 2 cached)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = get_recipe("mocov2", args.size)
    small_stem = args.size <= 64
    teacher = build_encoder(
        EncoderConfig(args.teacher, width=args.teacher_width, small_stem=small_stem)
    )
    student = build_student(
        student_config(args.student, 128, small_stem=small_stem, width=args.student_width)
    )
    f_t, f_s = forward_gflops(teacher, args.size), forward_gflops(student, args.size)
    if f_t < args.min_flops_ratio * f_s:
        raise SystemExit(
            f"teacher has {f_t / f_s:.1f}x the student's FLOPs; need >= {args.min_flops_ratio}x"
        )

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    ckpt = work / "teacher.pt"
    preprocessing = {"size": args.size, "mean": list(recipe.mean), "std": list(recipe.std)}
    save_checkpoint(ckpt, teacher, preprocessing | {"recipe": recipe.to_dict()})
    store = str(work / "store.zarr")
    run_precompute(
        PrecomputeConfig(
            teacher=str(ckpt),
            dataset=args.dataset,
            store=store,
            views=args.views,
            recipe="mocov2",
            size=args.size,
            workers=args.workers,
            device=args.device,
            precision=args.precision,
            progress=False,
        )
    )

    service = None
    if args.lazy_fill:  # started now: it loads while the other runs train
        lazy_store = empty_store(store, work / "service_stores", args.lazy_views)
        serve = ["--teacher", str(ckpt), "--store-root", str(lazy_store.parent),
                 "--device", args.device, "--threads", "1", "--max-wait-ms", "5",
                 "--log-level", "warning"]  # fmt: skip
        service = spawn_service(serve, work / "serve.log")
    try:
        _measure(args, store, ckpt, work, teacher, student, f_t, f_s, service)
    finally:
        if service is not None:
            service[0].terminate()
            service[0].wait(timeout=60)


def _measure(
    args: argparse.Namespace,
    store: str,
    ckpt: Path,
    work: Path,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    f_t: float,
    f_s: float,
    service: tuple[subprocess.Popen[bytes], str] | None,
) -> None:
    """The runs, the figures, the table and the JSON line (see the module docstring)."""
    common: dict[str, Any] = dict(
        arch=args.student,
        width=args.student_width,
        batch_size=args.batch,
        epochs=100,
        queue_size=args.queue,
        num_workers=args.workers,
        progress=False,
        stop_at_step=args.steps,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        checkpoint_every=10**6,
    )
    online = dict(method="disco", dataset=args.dataset, recipe="mocov2", size=args.size)
    runs: dict[str, dict[str, Any]] = {
        "mocov2": dict(method="mocov2", dataset=args.dataset, recipe="mocov2", size=args.size),
        "disco_cached": dict(method="disco", store=store),
        "disco_ram": dict(method="disco", store=store, store_in_ram=True),
        "disco_online": online | dict(online_teacher=str(ckpt), stop_at_step=args.online_steps),
    }
    results: dict[str, list[TrainResult]] = {name: [] for name in runs}
    for r in range(args.repeats):
        # interleaved, so machine noise hits all of them alike; cached and ram swap places
        # every repeat, so a drift in the machine's load does not favour either
        order = (
            list(runs) if r % 2 == 0 else ["disco_ram", "disco_cached", "mocov2", "disco_online"]
        )
        for name in order:
            cfg = TrainConfig(out=str(work / f"{name}{r}"), **(common | runs[name]))
            results[name].append(train(cfg))

    def med(name: str, per_step: Callable[[TrainResult], float]) -> float:
        return statistics.median(per_step(res) for res in results[name])

    sps = {name: med(name, lambda res: res.samples_per_second) for name in runs}
    ms = {  # ms per step: all, waiting for data, online teacher, the rest
        name: {
            "step": med(name, lambda res: 1000 * res.seconds / _steps(res)),
            "data": med(name, lambda res: 1000 * res.data_seconds / _steps(res)),
            "teacher": med(name, lambda res: 1000 * res.teacher_seconds / _steps(res)),
            "rest": med(
                name,
                lambda res: (
                    1000 * (res.seconds - res.data_seconds - res.teacher_seconds) / _steps(res)
                ),
            ),
        }
        for name in runs
    }
    predicted = (7 * f_s + 2 * f_t) / (7 * f_s)
    per_repeat = {name: [res.samples_per_second for res in results[name]] for name in runs}

    def paired(a: str, b: str) -> float:
        """Median over repeats of a / b within each repeat (the two ran minutes apart, so a
        load change between repeats, common on a shared machine, cancels)."""
        return statistics.median(x / y for x, y in zip(per_repeat[a], per_repeat[b], strict=True))

    read_cost = paired("disco_cached", "disco_ram")
    speedup = paired("disco_cached", "disco_online")
    rates = isolated_rates(teacher, student, f_t, f_s, args.size, args.batch)
    planning = plan_epoch_ms(store, args.batch)
    lazy = None
    if service is not None:
        wait_ready(*service, work / "serve.log", timeout=900.0)
        lazy = lazy_fill(work / "service_stores" / "lazy", service[1], work, common)
    run_teacher_rate = 2 * f_t * args.batch / (ms["disco_online"]["teacher"] / 1000)
    run_student_rate = 7 * f_s * args.batch / (ms["disco_cached"]["rest"] / 1000)

    print(
        f"{'run':<14}{'samples/s':>10}{'ms/step':>9}{'data':>7}{'teacher':>8}{'rest':>7}  repeats"
    )
    for name in runs:
        m = ms[name]
        reps = ", ".join(f"{res.samples_per_second:.1f}" for res in results[name])
        print(
            f"{name:<14}{sps[name]:>10.1f}{m['step']:>9.0f}{m['data']:>7.0f}{m['teacher']:>8.0f}"
            f"{m['rest']:>7.0f}  {reps}"
        )
    pair = [c / r for c, r in zip(per_repeat["disco_cached"], per_repeat["disco_ram"], strict=True)]
    print("read cost, cached / ram per repeat: " + ", ".join(f"{x:.3f}" for x in pair))
    print(
        f"student {args.student}(w{args.student_width}): {f_s:.4f} GFLOPs/img; teacher "
        f"{args.teacher}(w{args.teacher_width}): {f_t:.4f} ({f_t / f_s:.1f}x)"
    )
    print(
        f"speed-up vs online {speedup:.2f}, predicted by FLOPs {predicted:.2f} "
        f"({speedup / predicted:.2f} of it); achieved GFLOP/s in the runs: teacher forward "
        f"{run_teacher_rate:.1f}, student step {run_student_rate:.1f}"
    )
    print("isolated GFLOP/s on one batch: " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    print(
        f"planning one epoch of batches in the training process: from zarr {planning['zarr']} ms,"
        f" from RAM {planning['ram']} ms (a disco_ram epoch: "
        f"{ms['disco_ram']['step'] * results['disco_ram'][0].steps_per_epoch:.0f} ms)"
    )

    result: dict[str, Any] = {
        "bench": "train_throughput",
        "mocov2_sps": round(sps["mocov2"], 2),
        "disco_cached_sps": round(sps["disco_cached"], 2),
        "disco_ram_sps": round(sps["disco_ram"], 2),
        "disco_online_sps": round(sps["disco_online"], 2),
        "read_cost_ratio": round(read_cost, 3),
        "speedup_vs_online": round(speedup, 3),
        "predicted_speedup_vs_online": round(predicted, 3),
        "speedup_vs_prediction": round(speedup / predicted, 3),
        "cache_overhead_ratio": round(paired("disco_cached", "mocov2"), 3),
        "cache_overhead_ratio_note": "information: mocov2 does 4 student forwards/img, disco 7",
        "predicted_cache_overhead_ratio": round(4 / 7, 3),
        "sps_repeats": {name: [round(x, 2) for x in v] for name, v in per_repeat.items()},
        "plan_epoch_ms": planning,
        "ms_per_step": {name: {k: round(v, 1) for k, v in m.items()} for name, m in ms.items()},
        "run_teacher_gflop_s": round(run_teacher_rate, 2),
        "run_student_gflop_s": round(run_student_rate, 2),
        "isolated_gflop_s": rates,
        "student": f"{args.student}(width={args.student_width})",
        "teacher": f"{args.teacher}(width={args.teacher_width})",
        "student_gflops": round(f_s, 5),
        "teacher_gflops": round(f_t, 5),
        "flops_ratio": round(f_t / f_s, 2),
        "batch": args.batch,
        "size": args.size,
        "views": args.views,
        "steps": args.steps,
        "online_steps": args.online_steps,
        "repeats": args.repeats,
        "device": args.device,
        "precision": args.precision,
        "workers": args.workers,
        "threads": args.threads or torch.get_num_threads(),
    }
    if lazy is not None:
        e1, e2 = lazy["epoch1"], lazy["epoch2"]
        result |= {
            "lazy_fill_sps": round(e1.samples_per_second, 2),
            "lazy_fill_cached_sps": round(e2.samples_per_second, 2),
            "lazy_fill_vs_online": round(e1.samples_per_second / sps["disco_online"], 3),
            "lazy_fill_views": args.lazy_views,
            "lazy_fill_log": {
                "epoch1": {k: v for k, v in lazy["fill1"].items() if k.startswith("fill")},
                "epoch2": {k: v for k, v in lazy["fill2"].items() if k.startswith("fill")},
            },
        }
        print(
            f"lazy fill (V={args.lazy_views}, {lazy['spe']} steps/epoch): epoch 1 "
            f"{e1.samples_per_second:.1f} samples/s ({result['lazy_fill_vs_online']:.2f}x online,"
            f" data wait {1000 * e1.data_seconds / max(1, e1.steps):.0f} ms/step), epoch 2 "
            f"{e2.samples_per_second:.1f}; log {result['lazy_fill_log']}"
        )
    print(json.dumps(result))


def _steps(res: TrainResult) -> int:
    """Timed steps of a run (its ``stop_at_step``: every run starts from step 0)."""
    return max(1, res.steps)


if __name__ == "__main__":
    main()
