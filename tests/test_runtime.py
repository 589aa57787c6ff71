"""store.runtime: device choice (incl. torchrun's LOCAL_RANK), the autocast factory, and
the device switches, which leave the CPU path exactly as it was while the CUDA settings they choose
are the documented ones (checked without a GPU: the CUDA probe is patched, and only device *names*
are needed to pick a setting)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data._utils.pin_memory import pin_memory

from store import runtime
from store.errors import ConfigError
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, _Batch


class FakeCuda:
    """A stand-in for the CUDA probe: ``count`` visible GPUs, ``set_device`` calls recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.current: list[int] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", self.current.append)


def test_torchrun_ranks_get_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun (LOCAL_RANK set) ``auto`` and plain ``cuda`` mean ``cuda:LOCAL_RANK``, and
    the process's current CUDA device is set to it; an explicit index wins; CPU sets nothing."""
    cuda = FakeCuda(monkeypatch, count=4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert runtime.resolve_device("auto") == torch.device("cuda", 2)
    assert runtime.resolve_device("cuda") == torch.device("cuda", 2)
    assert runtime.resolve_device(None) == torch.device("cuda", 2)
    assert cuda.current == [2, 2, 2]
    assert runtime.resolve_device("cuda:3") == torch.device("cuda", 3)
    assert cuda.current[-1] == 3
    assert runtime.resolve_device("cpu") == torch.device("cpu") and len(cuda.current) == 4
    monkeypatch.delenv("LOCAL_RANK")
    assert runtime.resolve_device("cuda") == torch.device("cuda", 0)  # one process: GPU 0
    assert cuda.current[-1] == 0
    monkeypatch.setenv("LOCAL_RANK", "4")  # more ranks on this node than GPUs
    with pytest.raises(ConfigError, match=r"cuda:4 \(from LOCAL_RANK\) is not one of the 4"):
        runtime.resolve_device("auto")
    with pytest.raises(ConfigError, match="not one of the 4 visible GPUs"):
        runtime.resolve_device("cuda:7")


def test_device_names_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch, count=0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            runtime.resolve_device(name)
    for name in ("gpu", "cuda:x", "cuda0", "mps:0"):
        with pytest.raises(ConfigError, match=r"unknown device .* valid: auto, cpu, cuda, cuda:N"):
            runtime.resolve_device(name)
    assert cuda.current == []


def test_configs_check_device_names_with_the_runtimes_grammar(tmp_path: Path) -> None:
    """Every config refuses, when built, the names ``resolve_device`` refuses (one grammar,
    ``store.devices``); the FAISS GPU index goes to the GPU that ``cuda:N`` names."""
    from student_trainer.train.config import TrainConfig
    from teacher_service.config import VerifyConfig

    builders = [
        lambda d: PrecomputeConfig(teacher="t.pt", dataset="digits", store="s", device=d),
        lambda d: VerifyConfig(device=d),
        lambda d: TrainConfig(
            method="mocov2", arch="tiny", out=str(tmp_path), dataset="digits", device=d
        ),
    ]
    for build in builders:
        for good in ("auto", "cpu", "cuda", "cuda:3"):
            build(good)
        for bad in ("gpu", "cuda:x", "cuda:", "cuda0"):
            with pytest.raises(ConfigError, match=r"unknown device .* valid: auto, cpu, cuda"):
                build(bad)
    assert runtime.cuda_index("cuda:3") == 3 and runtime.cuda_index(torch.device("cuda", 1)) == 1
    assert runtime.is_cuda("cuda:2") and not runtime.is_cuda("cpu")


def test_training_resolves_its_device_through_the_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``disco train`` under torchrun: ``--device cuda`` goes through ``resolve_device`` (which maps
    LOCAL_RANK); without a GPU the fake probe says so and training refuses with one line."""
    FakeCuda(monkeypatch, count=0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    from student_trainer.train.config import TrainConfig
    from student_trainer.train.loop import train

    cfg = TrainConfig(method="mocov2", arch="tiny", out=str(tmp_path), dataset="synthetic:16",
                      device="cuda", progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="'cuda' requested but CUDA is not available"):
        train(cfg)


def test_autocast_factory() -> None:
    """No-op on CPU and in float32 (CPU paths stay bit-stable); CUDA autocast in the named
    dtype otherwise; one dtype-name map; unknown names refused."""
    for device in ("cpu", torch.device("cpu")):
        for dtype in ("float32", "float16", "bfloat16", None, torch.bfloat16):
            assert isinstance(runtime.autocast(device, dtype), contextlib.nullcontext)
    assert isinstance(runtime.autocast("cuda:0", "float32"), contextlib.nullcontext)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            ctx = runtime.autocast(torch.device("cuda", 0), name)
            assert isinstance(ctx, torch.autocast)
            assert ctx.device == "cuda" and ctx.fast_dtype == dtype
    assert set(runtime.DTYPES) == {"float32", "float16", "bfloat16"}
    assert runtime.DTYPES["bfloat16"] == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown compute dtype 'bf16'"):
        runtime.autocast("cpu", "bf16")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast("cpu", "bfloat16"):
        assert (a @ b).dtype == torch.float32


def test_cpu_keeps_the_plain_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 64)
    assert runtime.default_workers("cpu") == 2
    assert runtime.default_workers(torch.device("cpu"), cpu_default=0) == 0


def test_cuda_workers_scale_with_cores_per_gpu_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert runtime.default_workers("cuda") == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.default_workers("cuda:1") == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert runtime.default_workers("cuda") == 2  # never below the CPU default
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 256)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert runtime.default_workers("cuda") == runtime.MAX_AUTO_WORKERS


def test_prepare_model_and_to_device_keep_values_on_cpu() -> None:
    """CPU: an 8-channel model and every batch stay as plain code leaves them; a model whose convs
    all have >= 16 channels goes NHWC with the same weights and the same outputs."""
    torch.manual_seed(0)
    tiny = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=16, head_out=8))
    before = {k: (v.clone(), v.stride()) for k, v in tiny.state_dict().items()}
    bench_before = torch.backends.cudnn.benchmark
    assert runtime.prepare_model(tiny, "cpu") is tiny
    assert torch.backends.cudnn.benchmark == bench_before
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k
    x = torch.randn(2, 3, 16, 16)
    y = runtime.to_device(x, torch.device("cpu"))
    assert y.is_contiguous() and y.stride() == x.stride() and torch.equal(x, y)

    wide = build_encoder(
        EncoderConfig(arch="resnet10", width=16, small_stem=True, head_hidden=16, head_out=8)
    ).eval()
    with torch.no_grad():
        plain = wide(x, output="embedding")
    runtime.prepare_model(wide, "cpu")
    conv = next(m for m in wide.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(wide(x, output="embedding"), plain, atol=1e-5)


def test_precompute_batch_is_pinned_by_the_dataloader(monkeypatch: pytest.MonkeyPatch) -> None:
    """DataLoader(pin_memory=True) only pins what it knows: the batch dataclass must opt in."""
    pinned: list[torch.Tensor] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:  # pinning itself needs a CUDA driver
        out = self.clone()
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = _Batch(3, np.arange(2), np.zeros(2, np.int64), torch.randn(2, 3, 8, 8), [])
    out = pin_memory(batch)
    assert isinstance(out, _Batch) and out is not batch
    assert len(pinned) == 1 and out.images is pinned[0]
    assert torch.equal(out.images, batch.images) and out.shard == 3


def test_precompute_workers_none_asks_the_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``workers=None`` (the default) takes the count from ``default_workers(device)``."""
    import teacher_service.precompute as precompute
    from teacher_service.checkpoint import save_checkpoint

    asked: list[torch.device] = []

    def fake_default(device: torch.device, cpu_default: int = 2) -> int:
        asked.append(device)
        return 0  # in-process loading: no worker start-up cost in the test

    monkeypatch.setattr(precompute, "default_workers", fake_default)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=16, head_out=8))
    save_checkpoint(tmp_path / "t.pt", enc, {"size": 16, "mean": [0.5] * 3, "std": [0.5] * 3})
    cfg = PrecomputeConfig(
        teacher=str(tmp_path / "t.pt"), dataset="synthetic:8", store=str(tmp_path / "s.zarr"),
        views=2, size=16, shard_size=8, batch_size=16, device="cpu", progress=False,
    )  # fmt: skip
    assert cfg.workers is None
    report = precompute.run_precompute(cfg)
    assert asked == [torch.device("cpu")] and report.shards_computed == 1
    with pytest.raises(ConfigError, match="workers"):
        PrecomputeConfig(teacher="t.pt", dataset="synthetic:4", store="s", workers=-1)


def test_training_batch_is_pinned_by_the_dataloader(monkeypatch: pytest.MonkeyPatch) -> None:
    from student_trainer.train.data import PairBatch

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone() + 0)
    views = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for targets in ((None, None), (torch.randn(2, 4), torch.randn(2, 4))):
        batch = PairBatch(torch.arange(2), torch.zeros(2, 2), *views, *targets)
        out = pin_memory(batch)
        assert isinstance(out, PairBatch) and out.view1 is not batch.view1
        assert torch.equal(out.view1, batch.view1) and torch.equal(out.view2, batch.view2)
        if targets[0] is None:
            assert out.target1 is None and out.target2 is None
        else:
            assert out.target1 is not None and torch.equal(out.target1, targets[0])


def test_cuda_layout_path_runs_and_agrees_on_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CUDA branch of runtime (channels_last weights + batches), forced on CPU tensors: the
    precompute job, an online-DisCo training step and the service forward run with it and give
    the plain path's numbers (pinning, which needs a driver, stays off: it keys on the device)."""
    from store.embedding_store import EmbeddingStore
    from student_trainer.train.config import TrainConfig
    from student_trainer.train.loop import train
    from teacher_service.checkpoint import save_checkpoint
    from teacher_service.precompute import run_precompute
    from teacher_service.service.model import load_runtime

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=32, head_out=16))
    teacher = tmp_path / "t.pt"
    save_checkpoint(teacher, enc, {"size": 16, "mean": [0.5] * 3, "std": [0.5] * 3})

    def precompute(name: str) -> np.ndarray:
        cfg = PrecomputeConfig(
            teacher=str(teacher), dataset="synthetic:16", store=str(tmp_path / name), views=2,
            size=16, shard_size=16, batch_size=16, workers=0, device="cpu", progress=False,
        )  # fmt: skip
        run_precompute(cfg)
        return EmbeddingStore.open(cfg.store).read_shard(0).embeddings

    plain = precompute("plain.zarr")
    served = load_runtime(teacher, device="cpu")
    x = torch.randn(3, 3, 16, 16)
    plain_service = served.embed(x)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(runtime, "is_cuda", lambda device: True)
    nhwc = precompute("nhwc.zarr")
    assert np.abs(nhwc - plain).max() < 2e-3  # fp16 storage; only the conv layout differs
    assert torch.backends.cudnn.benchmark  # fixed-shape job: autotuning on
    torch.backends.cudnn.benchmark = False
    served = load_runtime(teacher, device="cpu")
    assert not torch.backends.cudnn.benchmark  # the service's batches vary in size: no autotune
    conv = next(m for m in served.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(served.embed(x) - plain_service).max() < 1e-4
    result = train(
        TrainConfig(
            method="disco", out=str(tmp_path / "run"), arch="tiny", dataset="synthetic:32",
            size=16, batch_size=8, epochs=1, queue_size=16, head_hidden=32, head_out=16,
            num_workers=0, progress=False, stop_at_step=2, online_teacher=str(teacher),
            threads=1,
        )
    )  # fmt: skip
    assert result.steps == 2 and all(np.isfinite(v) for v in result.last_terms.values())
