"""The training loop end to end on tiny data: outputs, exact resume, online teacher, failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from store.views import get_recipe
from student_trainer.cli import app
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import NonFiniteLossError, train
from teacher_service.checkpoint import load_encoder, read_checkpoint, save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder, count_parameters

TINY: dict[str, Any] = dict(
    arch="tiny",
    dataset="synthetic:64",
    size=16,
    batch_size=8,
    epochs=2,
    queue_size=16,
    head_hidden=32,
    num_workers=0,
    progress=False,
    checkpoint_every=4,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(**({"method": "mocov2", "out": str(out)} | TINY | kw))


def test_resume_matches_uninterrupted_run_bitwise(tmp_path: Path) -> None:
    full = train(_cfg(tmp_path / "full", stop_at_step=8))
    first = train(_cfg(tmp_path / "split", stop_at_step=4))
    assert first.steps == 4
    resumed = train(_cfg(tmp_path / "split", stop_at_step=8, resume=True))
    assert full.steps == resumed.steps == 8 and full.steps_per_epoch == 6  # crosses an epoch
    a = read_checkpoint(tmp_path / "full" / "ckpt" / "last.pt")
    b = read_checkpoint(tmp_path / "split" / "ckpt" / "last.pt")
    assert a["step"] == b["step"] == 8
    for key, value in a["model"].items():  # query + key encoders, queue, BN buffers
        assert torch.equal(value, b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    log = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    full_log = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    assert [r["loss"] for r in log] == [json.loads(x)["loss"] for x in full_log]


def test_outputs_load_as_teacher_and_deployed_backbone(tmp_path: Path) -> None:
    result = train(_cfg(tmp_path, stop_at_step=3))
    out = Path(result.out)
    for name in ("final.pt", "deployed.pt", "deployed.json", "config.json", "log.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "loss_curves.png").is_file()
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())).method == "mocov2"
    final = load_encoder(out / "final.pt")
    assert final.info["format"] == "disco" and final.info["embedding"] == "head"
    assert final.encoder.config.head_bn and final.encoder.config.head_hidden == 32
    assert final.info["preprocessing"]["size"] == 16
    deployed = load_encoder(out / "deployed.pt")
    assert deployed.encoder.head is None
    # deployed.pt is the backbone's plain state dict; its metadata lives in deployed.json.
    plain = read_checkpoint(out / "deployed.pt")
    assert set(plain) == set(final.encoder.backbone.state_dict())
    meta = deployed.info["meta"]
    assert meta == json.loads((out / "deployed.json").read_text())["meta"]
    assert meta["deployed_parameters"] == count_parameters(deployed.encoder)
    assert meta["deployed_parameters"] == count_parameters(final.encoder.backbone)
    assert result.deployed_parameters < result.student_parameters
    assert result.queue_size == 16 and meta["queue_size"] == 16


@pytest.mark.parametrize("method", ["disco", "seed"])
def test_online_teacher_targets_are_the_teachers_embeddings_of_the_rendered_views(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``online_teacher`` the targets the model receives at every step are the frozen
    teacher's embeddings of exactly the two rendered views of that step (checked against a
    separately loaded copy of the teacher); SEED queues view 1's targets."""
    import student_trainer.train.loop as train_module
    from student_trainer.train.moco import MoCo

    torch.manual_seed(1)
    teacher = build_encoder(EncoderConfig("tiny", head_hidden=32, head_out=24, small_stem=True))
    recipe = get_recipe("mocov2", 16)
    ckpt = tmp_path / "teacher.pt"
    save_checkpoint(ckpt, teacher, {"size": 16, "mean": list(recipe.mean), "std": list(recipe.std)})
    reference = load_encoder(ckpt).encoder.eval()
    received: list[tuple[torch.Tensor, torch.Tensor]] = []

    class RecordingMoCo(MoCo):
        def forward(self, view1: Any, view2: Any, target1: Any = None, target2: Any = None,
                    shuffle_seed: int = 0) -> Any:  # fmt: skip
            received.append((target1.detach().clone(), target2.detach().clone()))
            return super().forward(view1, view2, target1, target2, shuffle_seed)

    monkeypatch.setattr(train_module, "MoCo", RecordingMoCo)
    checked: list[int] = []
    seen_terms: set[str] = set()

    def hook(step: int, batch: Any, output: Any) -> None:
        t1, t2 = received[-1]
        with torch.no_grad():
            want1, want2 = reference(batch.view1), reference(batch.view2)
        assert t1.shape == (8, 24) and torch.allclose(t1, want1, atol=1e-6), step
        assert torch.allclose(t2, want2, atol=1e-6), step
        assert not torch.allclose(t1, t2)  # two different views of each image
        if method == "seed":
            assert torch.equal(output.teacher_keys, t1)  # SEED's queue gets view 1's targets
        seen_terms.update(output.terms)
        checked.append(step)

    cfg = _cfg(tmp_path / method, method=method, online_teacher=str(ckpt), stop_at_step=2)
    result = train(cfg, step_hook=hook)
    assert result.steps == 2 and checked == [1, 2] and len(received) == 2
    assert load_encoder(result.final_path).info["embed_dim"] == 24  # = the teacher's dim
    assert seen_terms == ({"infonce", "distill", "mse"} if method == "disco" else {"seed"})


def test_non_finite_loss_stops_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step"):
        train(_cfg(tmp_path, lr=1e30, warmup_epochs=0.0, weight_decay=0.0, stop_at_step=6))


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["train", "--arch", "tiny", "--out", str(tmp_path), "--dataset", "synthetic:64"]
    result = runner.invoke(app, [*base, "--method", "simclr"])
    assert result.exit_code == 1
    assert "unknown method 'simclr'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*base, "--method", "disco"])
    assert result.exit_code == 1 and "needs teacher targets" in result.output


def test_losses_are_read_back_only_at_the_log_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Terms stay on the device between flushes (every ``log_every`` steps, at epoch ends,
    checkpoints and the stop); the log still has every step, as with ``log_every=1``."""
    import student_trainer.train.loop as loop

    every = train(_cfg(tmp_path / "every", stop_at_step=7, log_every=1, checkpoint_every=100))
    flushed: list[int] = []
    real = loop._flush

    def counting(run: Any, collective: bool = True) -> None:
        flushed.append(run.step)
        real(run, collective)

    monkeypatch.setattr(loop, "_flush", counting)
    result = train(_cfg(tmp_path / "five", stop_at_step=7, log_every=5, checkpoint_every=100))
    spe = result.steps_per_epoch
    assert flushed == [s for s in range(1, 8) if s % 5 == 0 or s % spe == 0 or s == 7]
    assert len(flushed) < 7
    logs = [
        [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        for name in ("every", "five")
    ]
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in log] for log in logs]
    assert [r["step"] for r in logs[1]] == list(range(1, 8)) and strip[0] == strip[1]
    assert result.last_terms == every.last_terms and result.first_terms == every.first_terms


def test_non_finite_loss_is_never_checkpointed(tmp_path: Path) -> None:
    """The check runs before every checkpoint: a saved state holds finite weights only."""
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+ \(epoch"):
        train(_cfg(tmp_path, lr=1e30, warmup_epochs=0.0, weight_decay=0.0, stop_at_step=12,
                   checkpoint_every=1, log_every=50))  # fmt: skip
    state = tmp_path / "ckpt" / "last.pt"
    if state.exists():
        saved = torch.load(state, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
