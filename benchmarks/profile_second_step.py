"""Profile exactly one optimizer step, the second, of any DeepSpeed training entry point, ours or a peer's.

    torchrun --nproc_per_node 2 benchmarks/profile_second_step.py --out OUT -m longvila.stages.s4_context_ext ...
    torchrun --nproc_per_node 2 benchmarks/profile_second_step.py --out OUT benchmarks/alst_step.py ...

Both our trainer and ``benchmarks/alst_step.py`` end every step with ``DeepSpeedEngine.step()`` (one micro-batch
per step here), so the profiler starts when the first call returns and stops when the second returns: the window
is one whole step (batch, forward, backward, optimizer) after AdamW has allocated its state, the same window
for both systems, with no change to either's code. Each rank writes ``<out>/profile_rank<r>.txt`` (operators by
self CPU time) and ``<out>/profile_rank<r>.json`` (the top operators, for tables).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

TOP = 25


def write_profile(profile, out: Path, rank: int) -> None:
    averages = profile.key_averages()
    (out / f"profile_rank{rank}.txt").write_text(averages.table(sort_by="self_cpu_time_total", row_limit=TOP))
    rows = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
    (out / f"profile_rank{rank}.json").write_text(json.dumps(
        [{"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
          "cpu_total_s": e.cpu_time_total / 1e6} for e in rows], indent=2) + "\n")


def profile_second_step(out: Path) -> None:
    """Wrap ``DeepSpeedEngine.step`` so that the second step runs under the profiler."""
    import os

    import torch
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine.step
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    calls = []

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(None)
        if len(calls) == 1:
            profiler.start()
        elif len(calls) == 2:
            profiler.stop()
            write_profile(profiler, out, int(os.environ.get("RANK", "0")))
        return result

    DeepSpeedEngine.step = step


def main() -> None:
    argv = sys.argv[1:]
    if len(argv) < 3 or argv[0] != "--out":
        raise SystemExit("usage: profile_second_step.py --out DIR (-m MODULE | SCRIPT) [ARGS...]")
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    profile_second_step(out)
    target = argv[2:]
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main()
