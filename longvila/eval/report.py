"""The results of an evaluation grid: the JSON document and the depth x length accuracy heatmap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from longvila.eval.grid import GridSpec


def summarize(spec: GridSpec, cells: list[dict], config: dict) -> dict:
    """The results document: config, axes, the depth x X accuracy matrix, the mean, and every cell."""
    by_point = {(c[spec.x_name], c["depth"]): c for c in cells}
    matrix = [[by_point[(x, d)]["accuracy"] for x in spec.xs] for d in spec.depths]
    samples = [s for c in cells for s in c["samples"]]
    mean = sum(bool(s["correct"]) for s in samples) / len(samples) if samples else float("nan")
    return {
        "task": spec.task,
        "mean_accuracy": mean,
        "num_cells": len(cells),
        "num_samples": len(samples),
        "axes": {"x_name": spec.x_name, "x_label": spec.x_label, "x": list(spec.xs), "depth": list(spec.depths)},
        "accuracy": matrix,  # rows: depths, columns: x values
        "config": config,
        "cells": cells,
    }


def write_results(results: dict, output_dir, title: str | None = None) -> tuple[Path, Path]:
    """Write ``<task>_results.json`` and ``<task>_heatmap.png`` into ``output_dir``; return both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = results["task"]
    json_path, png_path = out / f"{task}_results.json", out / f"{task}_heatmap.png"
    tmp = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, json_path)
    plot_heatmap(results, png_path, title=title)
    return json_path, png_path


def plot_heatmap(results: dict, path, title: str | None = None) -> Path:
    """Depth (rows, 0% at the top) x haystack size (columns) heatmap, red (0) -> green (1), cells annotated."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    axes = results["axes"]
    xs, depths = axes["x"], axes["depth"]
    data = torch.tensor(results["accuracy"], dtype=torch.float64).numpy()
    # The red -> yellow -> green ramp of LongVA / LongVILA's needle plots, kept light enough for black text.
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    width = min(24.0, max(5.0, 0.55 * len(xs) + 2.5))
    height = min(16.0, max(3.0, 0.4 * len(depths) + 1.8))
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    image = ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=45 if len(xs) > 12 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel(axes["x_label"])
    ax.set_ylabel("Needle depth (%)")
    if len(xs) * len(depths) <= 600:
        size = 8 if len(xs) <= 16 else 6
        for i in range(len(depths)):
            for j in range(len(xs)):
                ax.text(j, i, f"{100 * data[i, j]:.0f}", ha="center", va="center", fontsize=size, color="black")
    ax.set_xticks([x - 0.5 for x in range(1, len(xs))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(depths))], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("accuracy")
    head = title or f"{results['task']} — {results['config'].get('model', '')}"
    ax.set_title(f"{head}\nmean accuracy {100 * results['mean_accuracy']:.1f}% "
                 f"({results['num_samples']} samples)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
