"""The evaluation grid: which (x, depth) points a long-context evaluation visits, and running them over ranks.

V-NIAH (:mod:`longvila.eval.vniah`) and passkey retrieval (:mod:`longvila.eval.passkey`) differ only in how they
build one sample for a grid point (x = haystack frames or context tokens, depth = where the needle goes). Both
plug an ``evaluate(x, depth)`` callable into :func:`run_grid` and hand the cells to
:func:`longvila.eval.report.write_results`.

``x`` takes ``range(min, max + 1, step)`` (``max`` is included when the step lands on it). Depths are percents
``0, step, 2*step, ... <= 100``. A needle at depth ``d`` in a haystack of ``n`` units (frames or filler sentences)
goes *before* unit ``floor(d * n / 100)`` (:func:`needle_index`, computed on exact fractions), so the sample has
``n + 1`` units and the needle is unit ``floor(d * n / 100)`` of them: depth 0 puts it first, depth 100 last. With
world > SP the grid points are split over the data-parallel groups and gathered on every rank at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch

from longvila.errors import EvalError

if TYPE_CHECKING:  # annotations only: the runtime module imports this one
    from longvila.eval.runtime import EvalRuntime


def value_range(lo: int, hi: int, step: int, name: str) -> list[int]:
    """``range(lo, hi + 1, step)`` with one-line errors naming the ``--min_<name>/--max_<name>/--<name>_step``
    flags."""
    if lo < 1:
        raise EvalError(f"--min_{name} must be >= 1, got {lo}")
    if hi < lo:
        raise EvalError(f"--min_{name} {lo} > --max_{name} {hi}")
    if step < 1:
        raise EvalError(f"--{name}_step must be >= 1, got {step}")
    return list(range(lo, hi + 1, step))


def depth_values(step: float) -> list[float]:
    """Depths in percent: 0, step, 2*step, ... up to and including 100 when the step lands on it."""
    if not 0 < step <= 100:
        raise EvalError(f"--depth_step must be in (0, 100] percent, got {step}")
    exact = Fraction(str(step))
    return [float(k * exact) for k in range(int(100 // exact) + 1)]


def needle_index(depth: float, n: int) -> int:
    """Where a needle at ``depth`` percent goes in a haystack of ``n`` units: ``floor(depth * n / 100)``.

    The needle is inserted *before* that haystack unit, so it ends up at exactly this index of the ``n + 1``
    units (0 = first, ``n`` = last). Computed on exact fractions: 10% of 30 frames is 3, not 2.9999.
    """
    if not 0 <= depth <= 100:
        raise EvalError(f"depth must be in [0, 100] percent, got {depth}")
    if n < 0:
        raise EvalError(f"haystack size must be >= 0, got {n}")
    return math.floor(Fraction(str(depth)) * n / 100)


def insert_needle(haystack, needle, depth: float):
    """``(haystack[:k] + needle + haystack[k:], k)`` with ``k = needle_index(depth, len(haystack))``.

    Works on lists (one needle item) and on tensors (``needle`` holds one unit along dim 0, e.g. (1, T, H)).
    """
    k = needle_index(depth, len(haystack))
    if isinstance(haystack, torch.Tensor):
        return torch.cat([haystack[:k], needle, haystack[k:]]), k
    return [*haystack[:k], needle, *haystack[k:]], k

@dataclass(frozen=True)
class GridSpec:
    task: str  # "vniah" | "passkey"
    x_name: str  # key of the x value in every cell ("frames" | "context_tokens")
    x_label: str  # heatmap axis label
    xs: tuple
    depths: tuple


def run_grid(spec: GridSpec, evaluate: Callable[[int, float], list[dict]], runtime: EvalRuntime | None = None,
             disable_tqdm: bool = False) -> list[dict]:
    """Evaluate every (x, depth) cell: ``evaluate(x, depth)`` returns one dict per sample (needle) of the cell,
    each with a boolean ``correct``. Data-parallel groups take every dp_size-th cell; all ranks get all cells."""
    from tqdm.auto import tqdm

    dp_rank, dp_size = (runtime.dp_rank, runtime.dp_size) if runtime is not None else (0, 1)
    points = [(x, depth) for x in spec.xs for depth in spec.depths]
    mine = points[dp_rank::dp_size]
    main = runtime is None or runtime.is_main
    cells = []
    with tqdm(total=len(mine), desc=spec.task, unit="cell", disable=disable_tqdm or not main,
              dynamic_ncols=True) as bar:
        for x, depth in mine:
            samples = evaluate(x, depth)
            if not samples:
                raise RuntimeError(f"{spec.task}: cell ({x}, {depth}) produced no samples")
            accuracy = sum(bool(s["correct"]) for s in samples) / len(samples)
            cells.append({spec.x_name: x, "depth": depth, "accuracy": accuracy, "samples": samples})
            bar.update(1)
            bar.set_postfix(acc=f"{sum(c['accuracy'] for c in cells) / len(cells):.2f}")
    if dp_size > 1:
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, cells)
        merged = {}
        for rank_cells in gathered:  # the SP ranks of a group return identical cells; keep one per point
            for cell in rank_cells:
                merged.setdefault((cell[spec.x_name], cell["depth"]), cell)
        cells = [merged[p] for p in points]
    return cells
