"""``--log_sample_ids``: which dataset indices every optimizer step trained on, and which it skipped as bad.

Why: when a loss spikes, the first question is which samples were in that step; and a resumed or resharded run
can be checked to have seen every sample exactly once. One file per data-parallel rank,
``sample_ids/dp<rank>.jsonl``, one line per step: ``{"step", "epoch", "ids", "skipped"}``. Only the first SP rank
of each group writes (its SP peers read the same samples). A resumed run first drops the lines past its step from
every file, including files of DP ranks the new layout no longer has.
"""

from __future__ import annotations

import json
from pathlib import Path

from longvila.engine.metrics import truncate_step_log

SAMPLE_LOG_DIR = "sample_ids"


def truncate_sample_logs(output_dir: Path, resume_step: int | None) -> None:
    """Rank 0, before any rank writes: a fresh run starts empty, a resumed one keeps steps <= ``resume_step``."""
    for path in sorted((Path(output_dir) / SAMPLE_LOG_DIR).glob("dp*.jsonl")):
        truncate_step_log(path, resume_step)


class SampleLog:
    def __init__(self, output_dir: Path, dp_rank: int, enabled: bool):
        self.enabled = enabled
        self.path = Path(output_dir) / SAMPLE_LOG_DIR / f"dp{dp_rank}.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, epoch: int, ids: list[int], skipped: list[int]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": step, "epoch": epoch, "ids": ids, "skipped": skipped}) + "\n")
