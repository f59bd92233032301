"""How far to trust ``longvila plan``: predicted against measured peak memory, and its verdict on published runs.

    python benchmarks/plan_accuracy.py --output_dir runs/plan_accuracy
    python benchmarks/plan_accuracy.py --output_dir runs/plan_accuracy --live   # plus one fresh CPU measurement

Part 1 predicts every row of ours in the long-context memory benchmark's result files
(``benchmarks/results/cpu-*-long-context-memory*.json``: fp32 CPU stage-4 steps at real layer shapes) and the old
and new rows of the long-video memory benchmark's (``cpu-*-long-video-memory*.json``: fp32 CPU stage-5 steps, SP 1
and 2), and prints predicted vs measured with the relative error. ``--live`` adds a fresh measurement: a
Qwen2-0.5B-shape, one-layer VILA checkpoint trained for two steps at 1,024 tokens in one process
(``longvila.plan.measured.live_comparison``, the same run ``tests/plan/test_accuracy.py`` makes). Part 2 runs the planner on the published runs of
``longvila.plan.published`` and prints its verdict, the layout it picks and the longest sample that fits. Writes
``plan_accuracy.json`` and ``plan_accuracy.png`` (predicted against measured, with the 10% band) into
``--output_dir``; the tables go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measured_comparisons() -> list:
    from longvila.plan.measured import compare_benchmark_rows, compare_video_rows

    out = []
    for path in sorted(RESULTS.glob("cpu-*-long-context-memory*.json")):
        out += [(path.name, c) for c in compare_benchmark_rows(json.loads(path.read_text()))]
    for path in sorted(RESULTS.glob("cpu-*-long-video-memory*.json")):
        out += [(path.name, c) for c in compare_video_rows(json.loads(path.read_text())["rows"])]
    return out


def accuracy_table(comparisons) -> str:
    lines = ["| source | probe | tokens | SP | measured GiB | predicted GiB | error | peak phase |",
             "|---|---|---|---|---|---|---|---|"]
    for source, c in comparisons:
        lines.append(f"| {source} | {c.label} | {c.tokens:,} | {c.sp} | {c.measured_gib:.2f} | "
                     f"{c.predicted.peak_gib:.2f} | {c.error * 100:+.1f}% | {c.predicted.peak_phase} |")
    worst = max(abs(c.error) for _, c in comparisons)
    lines.append(f"\nLargest error: {worst * 100:.1f}% over {len(comparisons)} measured points.")
    return "\n".join(lines)


def published_table() -> tuple[str, list[dict]]:
    from longvila.plan.published import PUBLISHED_RUNS, plan_published

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
        reach = f"{result.max_tokens:,} tokens" + (f" ({result.max_frames} frames)" if result.max_frames else "") \
            if result.max_tokens else "-"
        peak = f"{chosen.memory.peak_gib:.1f}" if chosen else "-"
        step = f"{chosen.time.total_s:.0f}" if chosen else "-"
        lines.append(f"| {run.name} ({run.source}) | {run.hardware} | {verdict} | {layout} | {peak} | {step} | {reach} |")
        rows.append({"run": run.name, "fits": result.fits, "verdict": verdict, "layout": layout,
                     "peak_gib": chosen.memory.peak_gib if chosen else None, "max_tokens": result.max_tokens,
                     "command": result.command()})
    return "\n".join(lines), rows


def plot(comparisons, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c.measured_gib for _, c in comparisons]
    predicted = [c.predicted.peak_gib for _, c in comparisons]
    top = max(measured + predicted) * 1.1
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.fill_between([0, top], [0, top * 0.9], [0, top * 1.1], color="tab:green", alpha=0.15, label="within 10%")
    ax.plot([0, top], [0, top], color="gray", lw=0.8)
    for label in sorted({c.label.split(",")[0] for _, c in comparisons}):
        points = [(c.measured_gib, c.predicted.peak_gib) for _, c in comparisons if c.label.startswith(label)]
        ax.scatter(*zip(*points), label=label, s=25)
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
    comparisons = measured_comparisons()
    if args.live:
        from longvila.plan.measured import build_live_probe, live_comparison

        with tempfile.TemporaryDirectory(prefix="plan-live-") as tmp:
            probe = build_live_probe(Path(tmp) / "probe")
            comparisons.append(("live run", live_comparison(probe, Path(tmp))))
    print(accuracy_table(comparisons))
    table, published = published_table()
    print()
    print(table)
    (args.output_dir / "plan_accuracy.json").write_text(json.dumps({
        "measured": [{"source": s, "label": c.label, "tokens": c.tokens, "sp": c.sp, "measured_gib": c.measured_gib,
                      "predicted": c.predicted.as_dict(), "error": c.error} for s, c in comparisons],
        "published": published}, indent=2) + "\n")
    plot(comparisons, args.output_dir / "plan_accuracy.png")


if __name__ == "__main__":
    main()
