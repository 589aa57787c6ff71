"""``disco demo --study``: the DisCo claim and the cache's claim, measured over seeds → study.md.

The study runs the demo (its store, its three students, its evaluation), then, in the same
folder and with the demo's settings unless an arm says otherwise:

* **main arms**: ``mocov2`` and ``disco`` students over ``seeds`` student seeds (the view plan stays
  the demo's): the claim "a small student distilled from the teacher's final embedding beats the
  same student trained with MoCo-v2 alone and approaches the teacher", as mean ± std;
* **λ**: ``disco`` with the other distillation weights;
* **V**: ``disco`` on the first 2 views of the demo's V=8 store (view v of row i is keyed by
  (seed, i, v), so that is exactly a V=2 store), on a V=32 store, and with an **online** teacher
  rendering fresh views every step (no store);
* **bottleneck**: ``disco`` with a student head hidden width of 128 / 512 instead of 2048;
* **weak teacher**: the seed-0 ``mocov2`` student itself (same size, same quality) used as the
  teacher, so there is nothing to distil: the regime where the effect must vanish;
* **cost**: cache build time (teacher forwards over V views per image, measured) against the
  teacher time an online run pays on every run; after how many runs the cache has paid off.

Every training run goes through the demo's :class:`RunLedger`, so an interrupted study resumes
where it stopped and finished runs are never trained twice. Scores are weighted 20-NN (k 20,
T 0.07) on mnist5k's test split against its train split; nothing is tuned on the test split.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from store.atomic import atomic_write_text
from student_trainer.demo.config import STUDENT_DEFAULTS, DemoConfig, StudyConfig
from student_trainer.demo.ledger import RunLedger
from student_trainer.demo.pipeline import build_store, run_demo, train_run
from student_trainer.eval.evaluate import evaluate
from student_trainer.eval.features import EncoderFeatures
from student_trainer.eval.report import format_pct
from student_trainer.train.config import TrainConfig
from teacher_service.checkpoint import file_sha256

__all__ = ["Arm", "StudyConfig", "StudyResult", "plan_arms", "render_study", "run_study"]


@dataclass(frozen=True)
class Arm:
    """One study arm: a named student setting trained over ``seeds``."""

    name: str
    group: str
    """Table it reports in: main, lambda, views, head, weak."""
    method: str
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    """TrainConfig fields changed from the demo's student settings."""
    label: str = ""
    """Row label in study.md."""
    store: str = "store.zarr"
    """Store (relative to the study folder) or "" for an online run without a store."""


@dataclass
class StudyResult:
    """What a study produced."""

    out: str
    summary: dict[str, Any]
    """Everything in study.json: arms with per-seed scores, baselines, costs, goals."""
    markdown: str


def plan_arms(demo: DemoConfig, study: StudyConfig) -> list[Arm]:
    """Every arm of the study in run order: main arms, weak teacher, V and online, λ, head
    (most telling first, so a study cut short has measured those). Pure: nothing is trained."""
    main = tuple(demo.seed + k for k in range(study.seeds))
    abl = tuple(demo.seed + k for k in range(study.ablation_seeds))
    lam = f"λ {demo.distill_weight:g}"
    v_main = demo.views
    arms = [
        Arm("mocov2", "main", "mocov2", main, label="mocov2 (no teacher)"),
        Arm("disco", "main", "disco", main, label=f"disco ({lam}, V {v_main}, head 2048)"),
    ]
    if study.symmetric_mocov2:
        arms.append(
            Arm(
                "mocov2-sym",
                "main",
                "mocov2",
                abl,
                (("symmetric", True),),
                label="mocov2, symmetric loss (no teacher)",
            )
        )
    if study.weak_teacher:
        arms.append(
            Arm(
                "disco-weak",
                "weak",
                "disco",
                abl,
                store="store-weak.zarr",
                label="disco from the weak teacher",
            )
        )
    for v in sorted(v for v in study.views if v < v_main):  # prefixes of the demo's store
        arms.append(Arm(f"disco-V{v}", "views", "disco", abl, (("views", v),), label=f"V {v}"))
    if study.online:
        arms.append(Arm("disco-online", "views", "disco", abl, store="", label="online teacher"))
    for v in sorted(v for v in study.views if v > v_main):  # stores of their own
        arms.append(
            Arm(f"disco-V{v}", "views", "disco", abl, store=f"store-v{v}.zarr", label=f"V {v}")
        )
    arms += [
        Arm(f"disco-lambda{w:g}", "lambda", "disco", abl, (("distill_weight", w),), f"λ {w:g}")
        for w in study.lambdas
        if w != demo.distill_weight
    ]
    arms += [
        Arm(f"disco-head{h}", "head", "disco", abl, (("head_hidden", h),), label=f"head {h}")
        for h in study.head_hidden
        if h != 2048
    ]
    return arms


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def run_study(demo: DemoConfig, study: StudyConfig, console: Console | None = None) -> StudyResult:
    """Run the demo, then every study arm, evaluate all students; write study.md/json.

    Resumable: finished runs and stores are reused (see :class:`RunLedger`).
    """
    console = console or Console()
    out = Path(demo.out)
    if demo.quick:
        study = study.shrunk(demo.views)
    demo_result = run_demo(demo, console)
    runs = RunLedger(out / "runs.json")
    teacher = demo.resolved_teacher()
    recipe = demo.resolved_recipe()
    device = None if demo.device == "auto" else demo.device
    arms = plan_arms(demo, study)

    def student_cfg(arm: Arm, seed: int, store_teacher: str) -> TrainConfig:
        source: dict[str, Any]
        if arm.store:
            source = {
                "store": str(out / arm.store),
                "expect": {"teacher.sha256": file_sha256(store_teacher)},
            }
        else:
            source = {
                "dataset": demo.dataset,
                "split": "train",
                "recipe": recipe,
                "size": demo.size,
                "online_teacher": teacher,
            }
        return demo.student(arm.method, seed, f"{arm.name}-s{seed}", source, dict(arm.overrides))

    for arm in arms:
        store_teacher = teacher
        if arm.group == "weak":
            weak_ckpt = runs.entries[f"mocov2-s{demo.seed}"]["final"]
            console.rule(f"[bold]cache of the weak teacher ({weak_ckpt})")
            build_store(runs, demo, arm.store, weak_ckpt, demo.views)
            store_teacher = weak_ckpt
        elif arm.store and arm.store != "store.zarr":
            v = dict(arm.overrides).get("views") or int(arm.store.split("-v")[1].split(".")[0])
            console.rule(f"[bold]cache with V={v} views per train image")
            build_store(runs, demo, arm.store, teacher, v)
        for seed in arm.seeds:
            console.rule(f"[bold]study arm {arm.name}, seed {seed}")
            train_run(runs, f"{arm.name}-s{seed}", student_cfg(arm, seed, store_teacher), console)

    console.rule("[bold]evaluate every study student (FAISS weighted kNN)")
    keys = [f"{a.name}-s{s}" for a in arms for s in a.seeds]
    models = [
        EncoderFeatures(runs.entries[k]["deployed"], size=demo.size, device=device, name=k)
        for k in keys
    ]
    records = evaluate(
        models,
        demo.dataset,
        teacher=teacher,
        size=demo.size,
        probe=None,
        device=device,
        cache_dir=out / "features",
        out=out / "study-eval",
        figures=False,
        progress=demo.progress,
    )
    by_name = {r["name"]: r for r in records}
    summary = _summarise(demo, study, arms, runs, by_name, demo_result.records)
    md = render_study(summary)
    atomic_write_text(out / "study.md", md)
    atomic_write_text(out / "study.json", json.dumps(summary, indent=2, default=str))
    console.print(md)
    return StudyResult(str(out), summary, md)


def _summarise(
    demo: DemoConfig,
    study: StudyConfig,
    arms: list[Arm],
    runs: RunLedger,
    by_name: dict[str, dict[str, Any]],
    demo_records: list[dict[str, Any]],
) -> dict[str, Any]:
    """study.json: per-arm per-seed kNN, mean ± std, baselines, costs and the goals."""
    teacher_rec = next(r for r in by_name.values() if r.get("role") == "teacher")
    pixels = next(r for r in by_name.values() if r["name"] == "raw pixels")
    arm_rows = []
    for arm in arms:
        scores = {s: by_name[f"{arm.name}-s{s}"]["knn_weighted"] for s in arm.seeds}
        secs = {s: runs.entries[f"{arm.name}-s{s}"]["seconds"] for s in arm.seeds}
        mean, std = _stats(list(scores.values()))
        arm_rows.append(
            {
                "name": arm.name,
                "group": arm.group,
                "label": arm.label,
                "method": arm.method,
                "seeds": list(arm.seeds),
                "knn_weighted": scores,
                "mean": mean,
                "std": std,
                "seconds": secs,
                "params": by_name[f"{arm.name}-s{arm.seeds[0]}"]["params"],
            }
        )
    rows = {r["name"]: r for r in arm_rows}
    main_m, main_d = rows["mocov2"], rows["disco"]
    t = float(teacher_rec["knn_weighted"])
    px = float(pixels["knn_weighted"])
    learned = [r for r in demo_records if r.get("role") in ("teacher", "student")]
    goals: dict[str, Any] = {
        "teacher_knn_at_least_0.97": t >= 0.97,
        "disco_beats_mocov2_by_2_points": main_d["mean"] >= main_m["mean"] + 0.02,
        "disco_within_1_point_of_teacher": main_d["mean"] >= t - 0.01,
        "every_learned_demo_model_above_pixels": all(
            float(r["knn_weighted"]) > px for r in learned if r.get("knn_weighted") is not None
        ),
    }
    cost = _cost(runs, rows, demo)
    if "disco-online" in rows and f"disco-V{max(study.views)}" in rows:
        vmax = rows[f"disco-V{max(study.views)}"]
        goals[f"V{max(study.views)}_within_1_point_of_online"] = (
            abs(vmax["mean"] - rows["disco-online"]["mean"]) <= 0.01
        )
    return {
        "demo": asdict(demo),
        "study": asdict(study),
        "teacher": {
            "name": teacher_rec["name"],
            "knn_weighted": t,
            "params": teacher_rec["params"],
        },
        "pixels": {"knn_weighted": px, "nn1": pixels.get("nn1")},
        "arms": arm_rows,
        "cost": cost,
        "goals": goals,
        "demo_rows": [
            {"name": r["name"], "knn_weighted": r.get("knn_weighted")} for r in demo_records
        ],
    }


def _cost(runs: RunLedger, rows: dict[str, dict[str, Any]], demo: DemoConfig) -> dict[str, Any]:
    """Cache build seconds per V against the teacher time an online run pays every run."""
    seed = demo.seed
    cached = runs.entries.get(f"disco-s{seed}", {}).get("seconds")
    online = runs.entries.get(f"disco-online-s{seed}", {}).get("seconds")
    builds = {k.split(":", 1)[1]: v for k, v in runs.entries.items() if k.startswith("precompute:")}
    per_view = [b["seconds"] / b["views"] for k, b in builds.items() if "weak" not in k]
    out: dict[str, Any] = {"cached_run_s": cached, "online_run_s": online, "builds": builds}
    if per_view:
        out["teacher_s_per_view"] = statistics.fmean(per_view)
    if cached and online and per_view:
        overhead = online - cached
        out["online_overhead_s"] = overhead
        table = {}
        for name, b in builds.items():
            if "weak" in name:
                continue
            table[name] = {
                "build_s": b["seconds"],
                "runs_to_pay_off": math.ceil(b["seconds"] / overhead) if overhead > 0 else None,
            }
        out["break_even"] = table
    return out


def render_study(summary: dict[str, Any]) -> str:
    """study.md from a study summary (see :func:`run_study`)."""
    arms = {a["name"]: a for a in summary["arms"]}
    t = summary["teacher"]["knn_weighted"]
    px = summary["pixels"]["knn_weighted"]
    demo = summary["demo"]
    cell = _cell
    lines = [
        "# DisCo study",
        "",
        f"Dataset {demo['dataset']} (train split distilled, test split = kNN queries), "
        f"{demo['size']} px, student {demo['student_arch']} width {demo['student_width']} "
        f"({arms['mocov2']['params']:,} deployed parameters), {demo['epochs']} epochs, "
        f"batch {STUDENT_DEFAULTS['batch_size']}; teacher {summary['teacher']['name']} "
        f"({summary['teacher']['params']:,} parameters). Scores: weighted 20-NN accuracy (%, "
        "k 20, T 0.07, cosine); mean ± sample std over student seeds; per-seed values listed.",
        "",
        "## The DisCo claim (the demo's settings)",
        "",
        "| model | kNN-w (mean ± std) | per seed | Δ vs mocov2 |",
        "|---|---|---|---|",
        f"| teacher | {format_pct(t)} | — | |",
        f"| raw pixels (cosine) | {format_pct(px)} | — | |",
    ]
    base = arms["mocov2"]["mean"]
    for a in summary["arms"]:
        if a["group"] == "main":
            lines.append(f"| {a['label']} | {cell(a)} | {100 * (a['mean'] - base):+.1f} |")
    lines += _ablations(summary, arms)
    lines += _cost_section(summary["cost"])
    lines += ["", "## Goals", ""]
    lines += [
        f"- {k.replace('_', ' ')}: **{'yes' if v else 'no'}**" for k, v in summary["goals"].items()
    ]
    return "\n".join(lines) + "\n"


def _cell(a: dict[str, Any]) -> str:
    """``mean ± std | per-seed values`` of an arm (percent)."""
    per = ", ".join(format_pct(v) for v in a["knn_weighted"].values())
    if len(a["seeds"]) > 1:
        return f"{format_pct(a['mean'])} ± {format_pct(a['std'])} | {per}"
    return f"{format_pct(a['mean'])} | {per}"


def _ablations(summary: dict[str, Any], arms: dict[str, dict[str, Any]]) -> list[str]:
    """One table per ablation group (λ, V, head width, weak teacher) against the disco arm."""
    lines: list[str] = []
    cell = _cell
    for group, title, note in (
        ("lambda", "DisCo λ", "distillation weight (batch mean of ‖ŝ − t‖², both views)"),
        ("views", "Cached views V against an online teacher", "views per train image"),
        ("head", "The Distilling BottleNeck (student head hidden width)", "head hidden width"),
        ("weak", "Weak teacher: nothing to distil", "the seed-0 mocov2 student as teacher"),
    ):
        group_rows = [a for a in summary["arms"] if a["group"] == group]
        if not group_rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            f"Arm setting: {note}. Reference: the main disco arm.",
            "",
            "| arm | kNN-w | per seed | Δ vs disco (same seeds) |",
            "|---|---|---|---|",
        ]
        ref = arms["disco"]
        lines.append(f"| {ref['label']} | {cell(ref)} | |")
        for a in group_rows:
            same = [ref["knn_weighted"][s] for s in a["knn_weighted"] if s in ref["knn_weighted"]]
            delta = a["mean"] - statistics.fmean(same) if same else float("nan")
            lines.append(f"| {a['label']} | {cell(a)} | {100 * delta:+.1f} |")
        if group == "weak":
            first = group_rows[0]["seeds"][0]
            weak = format_pct(arms["mocov2"]["knn_weighted"][first])
            lines.append(f"| the weak teacher itself (mocov2 seed {first}) | {weak} | | |")
    return lines


def _cost_section(cost: dict[str, Any]) -> list[str]:
    """The cache's cost: teacher time per run online against each store's build time."""
    lines = ["", "## Cost: cache build against per-run teacher time", ""]
    if "break_even" in cost:
        lines += [
            f"One cached disco run took {cost['cached_run_s']:.0f} s, the same run with an online "
            f"teacher {cost['online_run_s']:.0f} s: the teacher costs "
            f"{cost['online_overhead_s']:.0f} s per run online. Teacher forward: "
            f"{1000 * cost['teacher_s_per_view']:.2f} ms per view in the cache builds.",
            "",
            "| store | build s | student runs until the cache has paid off |",
            "|---|---|---|",
        ]
        for name, b in cost["break_even"].items():
            lines.append(f"| {name} | {b['build_s']:.0f} | {b['runs_to_pay_off']} |")
    else:
        lines.append("(needs the online arm and a measured cache build)")
    return lines
