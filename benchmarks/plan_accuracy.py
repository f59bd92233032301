"""How far to trust ``longvila plan``: predicted against measured peak memory, and its verdict on published runs.

    python benchmarks/plan_accuracy.py --output_dir runs/plan_accuracy
    python benchmarks/plan_accuracy.py --output_dir runs/plan_accuracy --live   # plus one fresh CPU measurement

Part 1 predicts every row of ours in the memory benchmarks' result files (``benchmarks/results``: the long-context
benchmark's fp32 CPU stage-4 steps at real layer shapes, the long-video benchmark's stage-5 steps, and the held-out
probes of ``benchmarks/plan_heldout.sh``) and prints predicted vs measured with the relative error, in two tables:
in sample (the rows the model's constants were fitted on, or its video terms worked out on) and held out (rows none
of that looked at), as ``longvila.plan.heldout`` declares them, each with its own worst error. ``--live`` adds a
fresh held-out measurement: a Qwen2-0.5B-shape, two-layer VILA checkpoint trained for two steps at 1,024 tokens as
a zigzag ring over two gloo ranks (``longvila.plan.measured.live_comparison``, the same run
``tests/plan/test_accuracy.py`` makes). Part 2 runs the planner on the published runs of ``longvila.plan.published``
and prints its verdict, the layout it picks and the longest sample that fits. Writes ``plan_accuracy.json`` and
``plan_accuracy.png`` (predicted against measured, with the 10% band, in sample and held out apart) into
``--output_dir``; the tables go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measured_comparisons() -> dict[str, list]:
    """``{"in sample": [(file, comparison), ...], "held out": [...]}`` (``longvila.plan.heldout``)."""
    from longvila.plan.heldout import split_comparisons

    return split_comparisons(RESULTS)


def accuracy_table(comparisons, side: str) -> str:
    lines = [f"{side}:", "", "| source | probe | tokens | SP | measured GiB | predicted GiB | error | peak phase |",
             "|---|---|---|---|---|---|---|---|"]
    for source, c in comparisons:
        lines.append(f"| {source} | {c.label} | {c.tokens:,} | {c.sp} | {c.measured_gib:.2f} | "
                     f"{c.predicted.peak_gib:.2f} | {c.error * 100:+.1f}% | {c.predicted.peak_phase} |")
    worst = max(abs(c.error) for _, c in comparisons)
    mean = sum(abs(c.error) for _, c in comparisons) / len(comparisons)
    lines.append(f"\n{side}: largest error {worst * 100:.1f}%, mean absolute error {mean * 100:.1f}%, over "
                 f"{len(comparisons)} measured points.")
    return "\n".join(lines)


def published_table() -> tuple[str, list[dict]]:
    from longvila.plan.published import PUBLISHED_RUNS, plan_published
    from longvila.plan.report import not_yet_run_on_gpu

    lines = ["| published run | hardware | planner verdict | layout it picks | peak GiB/GPU | step s | longest that fits |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for run in PUBLISHED_RUNS:
        result = plan_published(run)
        chosen = result.best if result.fits else result.alternative
        if result.fits:
            verdict = "fits"
        else:
            reasons = sorted({p for c in result.rejected for p in c.problems if c.memory is None})
            verdict = "cannot run as published: " + "; ".join(reasons[:2])
        layout = (f"{chosen.layout.describe()}, {chosen.choices.deepspeed}, checkpointing {chosen.choices.checkpointing}"
                  + (", LoRA" if chosen.choices.lora else "")) if chosen else "none"
        if chosen and not result.fits:
            layout = "instead: " + layout
        untested = not_yet_run_on_gpu(result, chosen) if chosen else []
        if untested:
            layout += f" (not yet run on a GPU: {', '.join(untested)})"
        reach = f"{result.max_tokens:,} tokens" + (f" ({result.max_frames} frames)" if result.max_frames else "") \
            if result.max_tokens else "-"
        peak = f"{chosen.memory.peak_gib:.1f}" if chosen else "-"
        step = f"{chosen.time.total_s:.0f}" if chosen else "-"
        lines.append(f"| {run.name} ({run.source}) | {run.hardware} | {verdict} | {layout} | {peak} | {step} | {reach} |")
        rows.append({"run": run.name, "fits": result.fits, "verdict": verdict, "layout": layout,
                     "peak_gib": chosen.memory.peak_gib if chosen else None, "max_tokens": result.max_tokens,
                     "command": result.command(), "not_yet_run_on_gpu": untested})
    return "\n".join(lines), rows


def plot(sides: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [c for comparisons in sides.values() for _, c in comparisons]
    top = max(max(c.measured_gib, c.predicted.peak_gib) for c in everything) * 1.1
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.fill_between([0, top], [0, top * 0.9], [0, top * 1.1], color="tab:green", alpha=0.15, label="within 10%")
    ax.plot([0, top], [0, top], color="gray", lw=0.8)
    for (side, comparisons), marker in zip(sides.items(), ("o", "^")):
        points = [(c.measured_gib, c.predicted.peak_gib) for _, c in comparisons]
        ax.scatter(*zip(*points), label=f"{side} ({len(points)})", s=25, marker=marker)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("measured peak per rank (GiB)")
    ax.set_ylabel("longvila plan's prediction (GiB)")
    ax.set_title("Planner vs measured, fp32 CPU stage-4 and stage-5 steps", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--live", action="store_true", help="add a fresh one-layer CPU measurement (~1 minute)")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    sides = measured_comparisons()
    if args.live:
        from longvila.plan.measured import build_live_probe, live_comparison

        with tempfile.TemporaryDirectory(prefix="plan-live-") as tmp:
            probe = build_live_probe(Path(tmp) / "probe")
            sides["held out"].append(("live run", live_comparison(probe, Path(tmp))))
    for side, comparisons in sides.items():
        print(accuracy_table(comparisons, side))
        print()
    table, published = published_table()
    print(table)
    (args.output_dir / "plan_accuracy.json").write_text(json.dumps({
        "measured": [{"side": side, "source": s, "label": c.label, "tokens": c.tokens, "sp": c.sp,
                      "measured_gib": c.measured_gib, "predicted": c.predicted.as_dict(), "error": c.error}
                     for side, comparisons in sides.items() for s, c in comparisons],
        "worst_error": {side: max(abs(c.error) for _, c in comparisons) for side, comparisons in sides.items()},
        "published": published}, indent=2) + "\n")
    plot(sides, args.output_dir / "plan_accuracy.png")


if __name__ == "__main__":
    main()
