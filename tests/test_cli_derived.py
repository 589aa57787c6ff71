"""The CLI is derived from the configs (a flag's default and help are its field's) and starts light:
importing it, and every ``--help``, loads no torch, zarr or torchvision."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from store.cli_options import field_docs
from student_trainer.cli import app
from student_trainer.train.config import TrainConfig
from teacher_service.config import PrecomputeConfig, VerifyConfig
from teacher_service.service.settings import ServiceSettings

HEAVY = ("torch", "zarr", "torchvision")

PROBE = """
import json, sys
from typer.testing import CliRunner
import student_trainer.cli
loaded = {"import": [m for m in HEAVY if m in sys.modules]}
runner = CliRunner()
for args in COMMANDS:
    result = runner.invoke(student_trainer.cli.app, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)
    loaded[" ".join(args) or "disco"] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(loaded))
"""

COMMANDS = [
    [],
    ["train"],
    ["precompute"],
    ["serve"],
    ["eval"],
    ["demo"],
    ["store"],
    ["store", "create"],
    ["store", "info"],
    ["store", "check"],
    ["store", "append"],
    ["store", "verify"],
]


def test_cli_import_and_every_help_leave_torch_zarr_torchvision_unloaded() -> None:
    code = f"HEAVY = {HEAVY!r}\nCOMMANDS = {COMMANDS!r}\n" + PROBE
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(loaded) == {"import"} | {" ".join(c) or "disco" for c in COMMANDS}
    assert loaded == {key: [] for key in loaded}


def test_disco_help_as_a_program_loads_no_torch() -> None:
    """``python -m student_trainer.cli train --help`` (what the ``disco`` script runs)."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['disco', 'train', '--help']\n"
        "try:\n"
        "    runpy.run_module('student_trainer.cli', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--batch-size" in proc.stdout and "--lambda" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"


def _options(*path: str) -> dict[str, Any]:
    """Parameter name -> click parameter of ``disco PATH...``."""
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p for p in command.params if p.name is not None}


def _check_dataclass(cls: type, options: dict[str, Any], skip: set[str]) -> None:
    docs = field_docs(cls)
    names = {f.name for f in dataclasses.fields(cls)} - skip
    assert names <= set(options), sorted(names - set(options))
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        option = options[f.name]
        if f.default is dataclasses.MISSING:
            assert option.required, f.name
        else:
            assert option.default == f.default, (f.name, option.default, f.default)
            assert type(option.default) is type(f.default), f.name
        assert isinstance(option, TyperOption) and option.help, f.name
        if f.name in docs and f.name != "method":
            assert option.help == docs[f.name], f.name


def test_every_train_option_default_is_the_config_default() -> None:
    options = _options("train")
    _check_dataclass(TrainConfig, options, skip={"expect"})
    assert isinstance(options["num_workers"], TyperOption)
    assert options["num_workers"].opts == ["--workers"]  # the README's names
    assert set(options["distill_weight"].opts) == {"--lambda", "--distill-weight"}
    assert "mocov2, disco, seed" in str(options["method"].help)
    assert options["prefill_queue"].secondary_opts == ["--no-prefill-queue"]


def test_every_precompute_and_verify_option_default_is_the_config_default() -> None:
    _check_dataclass(PrecomputeConfig, _options("precompute"), skip=set())
    verify = _options("store", "verify")
    _check_dataclass(VerifyConfig, verify, skip=set())
    assert verify["teacher"].required and isinstance(verify["store"], TyperArgument)


def test_every_serve_option_shows_the_settings_default_and_leaves_env_in_charge() -> None:
    options = _options("serve")
    # Plus the object-storage flags every data command shares (store.cli_options.remote_options).
    assert set(options) == set(ServiceSettings.model_fields) | {"storage_options", "single_writer"}
    for name, info in ServiceSettings.model_fields.items():
        option = options[name]
        assert isinstance(option, TyperOption)
        assert option.default is None, name  # not given -> DISCO_* env var, then the default
        shown = "required" if info.is_required() else repr(info.get_default())
        assert option.show_default == shown, name
        assert f"[env DISCO_{name.upper()}]" in str(option.help), name


def test_train_with_only_the_required_options_builds_the_default_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The options pass through to ``TrainConfig`` untouched: no option restates a default."""
    import student_trainer.train.loop as train_module

    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig) -> Any:
        seen.append(cfg)
        raise train_module.NonFiniteLossError("stop here")

    monkeypatch.setattr(train_module, "train", fake_train)
    base = ["train", "--method", "mocov2", "--arch", "tiny", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*base, "--dataset", "digits"])
    assert result.exit_code == 1 and "stop here" in result.output
    assert seen == [TrainConfig(method="mocov2", arch="tiny", out=str(tmp_path), dataset="digits")]
    result = CliRunner().invoke(
        app,
        [*base, "--dataset", "digits", "--lambda", "2", "--workers", "0", "--no-head-bn",
         "--small-stem", "--expect-views", "8", "--queue-size", "99"],
    )  # fmt: skip
    cfg = seen[-1]
    assert (cfg.distill_weight, cfg.num_workers, cfg.head_bn, cfg.small_stem) == (
        2.0,
        0,
        False,
        True,
    )
    assert cfg.queue_size == 99 and cfg.expect == {"recipe.views": 8}
