"""Benchmark view rendering: per-view reference vs the batched renderer (CPU, CUDA), torchvision v2
with the same ops, and JPEG decoding (Pillow, torchvision CPU, nvjpeg on CUDA).

All on the same generated 640x427 JPEGs and the same planned ``mocov2`` views at ``--size`` px.
Figures are views/s (decodes/s for decoding), medians of ``--repeats`` runs taken in alternation.
On CUDA the ResNet-50 teacher's forward rate (bf16 autocast, channels_last) is measured in the same
run, so rendering can be compared with what it has to feed. Last line: one JSON object with
``reference_vps``, ``batched_cpu_b64_vps``, ``batched_cpu_b256_vps``, ``torchvision_v2_vps``,
``render_ratio`` (best batched CPU / reference), decode rates, a CPU ResNet-50 forward rate and,
with CUDA, ``batched_cuda_vps``, ``nvjpeg_decode_ps``, ``teacher_resnet50_vps`` and
``render_vs_teacher`` (CUDA render / teacher forward; >= 1 means rendering is not the slower side).

    python bench/render.py                     # CPU, about 2-3 minutes on 2 busy cores
    python bench/render.py --device cuda       # on a GPU host (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from store.decode import decode_image
from store.views import get_recipe, normalise_views, plan_views, render_view, render_views


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=224, help="view side in px")
    p.add_argument("--images", type=int, default=32, help="distinct source JPEGs (640x427)")
    p.add_argument("--ref-views", type=int, default=64, help="views per reference repeat")
    p.add_argument("--batches", default="64,256", help="batched CPU batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU figures")
    p.add_argument("--cuda-batch", type=int, default=256)
    p.add_argument("--no-teacher", action="store_true", help="skip the ResNet-50 forward rates")
    return p.parse_args()


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Photo-like 640x427 JPEGs (smooth colour fields, shapes, noise), quality 90."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:427, 0:640].astype(np.float32)
    out = []
    for _ in range(n):
        base = np.stack(
            [
                127 + 100 * np.sin(xx / rng.uniform(20, 90) + rng.uniform(0, 6)),
                127 + 100 * np.cos(yy / rng.uniform(20, 90) + rng.uniform(0, 6)),
                127 + 100 * np.sin((xx + yy) / rng.uniform(30, 120)),
            ],
            axis=-1,
        )
        cy, cx, r = rng.uniform(50, 380), rng.uniform(50, 590), rng.uniform(30, 150)
        base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        base += rng.normal(0, 12, base.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _rate(fn: Callable[[], object], count: int, sync: Callable[[], None] | None = None) -> float:
    if sync:
        sync()
    t = time.perf_counter()
    fn()
    if sync:
        sync()
    return count / (time.perf_counter() - t)


def _tv2_pipeline(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    from store.views import blur_kernel_size

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), (0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(),
        ]
    )


def _resnet50_rate(device: str, batch: int, size: int, repeats: int) -> float:
    import torchvision

    model = torchvision.models.resnet50().eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    ctx: Callable[[], object]
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)

        def ctx() -> object:
            return torch.autocast("cuda", dtype=torch.bfloat16)

        sync: Callable[[], None] | None = torch.cuda.synchronize
    else:

        def ctx() -> object:
            return torch.autocast("cpu", enabled=False)

        sync = None
    with torch.inference_mode(), ctx():  # type: ignore[attr-defined]
        model(x)
        rates = [_rate(lambda: model(x), batch, sync) for _ in range(repeats)]
    return statistics.median(rates)


def main() -> None:
    a = _args()
    recipe = get_recipe("mocov2", a.size)
    jpegs = _jpegs(a.images)
    images = [decode_image(j) for j in jpegs]
    hs = np.array([im.shape[0] for im in images])
    ws = np.array([im.shape[1] for im in images])
    per_image = max(1, (max(int(b) for b in a.batches.split(",")) // a.images) + 1)
    plan = plan_views(recipe, 0, hs, ws, per_image)
    flat_src = [images[i] for i in range(a.images) for _ in range(per_image)]
    flat_params = plan.reshape(-1, recipe.num_params)
    batches = [int(b) for b in a.batches.split(",")]
    import torchvision.io as tvio

    jpeg_tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    tv2 = _tv2_pipeline(a.size)
    tv2_src = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]

    # Warm-up (lazy init, caches) and an exactness spot check on this data.
    nref = min(a.ref_views, len(flat_src))
    want = torch.stack([render_view(flat_src[k], flat_params[k], recipe) for k in range(8)])
    got = normalise_views(
        render_views(flat_src[:8], flat_params[:8], recipe), recipe.mean, recipe.std
    )
    exact = bool(torch.equal(got, want))
    tv2(tv2_src[0])

    res: dict[str, list[float]] = {"reference": [], "tv2": [], "pil_decode": [], "tv_decode": []}
    for b in batches:
        res[f"b{b}"] = []
    for _ in range(a.repeats):
        res["reference"].append(
            _rate(
                lambda: [render_view(flat_src[k], flat_params[k], recipe) for k in range(nref)],
                nref,
            )
        )
        for b in batches:
            res[f"b{b}"].append(
                _rate(lambda b=b: render_views(flat_src[:b], flat_params[:b], recipe), b)
            )
        res["tv2"].append(_rate(lambda: [tv2(tv2_src[k % a.images]) for k in range(nref)], nref))
        res["pil_decode"].append(_rate(lambda: [decode_image(j) for j in jpegs], len(jpegs)))
        res["tv_decode"].append(
            _rate(lambda: [tvio.decode_jpeg(t) for t in jpeg_tensors], len(jpegs))
        )
    med = {k: statistics.median(v) for k, v in res.items()}
    best_b = max(batches, key=lambda b: med[f"b{b}"])
    out: dict[str, object] = {
        "bench": "render",
        "size": a.size,
        "threads": torch.get_num_threads(),
        "cpu_exact": exact,
        "reference_vps": round(med["reference"], 1),
        **{f"batched_cpu_b{b}_vps": round(med[f"b{b}"], 1) for b in batches},
        "torchvision_v2_vps": round(med["tv2"], 1),
        "render_ratio": round(med[f"b{best_b}"] / med["reference"], 2),
        "pil_decode_ps": round(med["pil_decode"], 1),
        "tv_decode_cpu_ps": round(med["tv_decode"], 1),
    }
    if not a.no_teacher:
        out["teacher_resnet50_cpu_vps"] = round(_resnet50_rate("cpu", 8, a.size, 1), 2)

    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but CUDA is not available")
        dev = "cuda"
        b = a.cuda_batch
        idx = [k % len(flat_src) for k in range(b)]
        src = [flat_src[k] for k in idx]
        params = flat_params[idx]
        gpu_src = [torch.from_numpy(im).to(dev) for im in images]
        gsrc = [gpu_src[k // per_image % a.images] for k in idx]
        cpu = render_views(src[:64], params[:64], recipe)
        gpu = render_views(gsrc[:64], params[:64], recipe, dev).cpu()
        out["cuda_max_abs_diff"] = int((gpu.int() - cpu.int()).abs().max())
        sync = torch.cuda.synchronize
        cuda_rates = [
            _rate(lambda: render_views(gsrc, params, recipe, dev), b, sync)
            for _ in range(a.repeats)
        ]
        host_rates = [
            _rate(lambda: render_views(src, params, recipe, dev), b, sync) for _ in range(a.repeats)
        ]
        dec_batch = [jpeg_tensors[k % len(jpeg_tensors)] for k in range(b)]
        tvio.decode_jpeg(dec_batch[:4], device=dev)
        nv = [
            _rate(lambda: tvio.decode_jpeg(dec_batch, device=dev), b, sync)
            for _ in range(a.repeats)
        ]
        out["batched_cuda_vps"] = round(statistics.median(cuda_rates), 1)
        out["batched_cuda_from_host_vps"] = round(statistics.median(host_rates), 1)
        out["nvjpeg_decode_ps"] = round(statistics.median(nv), 1)
        if not a.no_teacher:
            teacher = _resnet50_rate(dev, b, a.size, a.repeats)
            out["teacher_resnet50_vps"] = round(teacher, 1)
            out["render_vs_teacher"] = round(out["batched_cuda_vps"] / teacher, 2)  # type: ignore[operator]

    print(f"{'path':36s} {'per s':>10s}")
    for k, v in out.items():
        if k.endswith(("_vps", "_ps")):
            print(f"{k:36s} {v:>10}")
    print(
        f"render_ratio (batched CPU / reference) = {out['render_ratio']}; CPU bytes exact: {exact}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
