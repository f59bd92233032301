"""Functions the multi-rank evaluation tests run on every rank (module-level so spawned ranks can import them)."""

from __future__ import annotations

from pathlib import Path


def vniah_scores(rank: int, world_size: int, output_dir: str, needle_file: str, sp: int,
                 scoring: str = "teacher_forced") -> list:
    from longvila.eval.vniah import VNIAHConfig, run_vniah

    grid = dict(min_frames=5, max_frames=13, frames_step=4) if scoring == "teacher_forced" else dict(
        min_frames=7, max_frames=7, frames_step=1, max_new_tokens=3)
    cfg = VNIAHConfig(output_dir=Path(output_dir), needles=needle_file, depth_step=50, seq_parallel_size=sp,
                      disable_tqdm=True, scoring=scoring, **grid)
    return summary(run_vniah(cfg), "frames")


def passkey_scores(rank: int, world_size: int, output_dir: str, sp: int) -> list:
    from longvila.eval.passkey import PasskeyConfig, run_passkey

    cfg = PasskeyConfig(output_dir=Path(output_dir), min_length=100, max_length=200, length_step=100,
                        depth_step=50, seq_parallel_size=sp, disable_tqdm=True)
    return summary(run_passkey(cfg), "context_tokens")


def summary(results: dict, x_name: str) -> list:
    """Per cell and sample: what decides the score (prediction, correctness) and the answer NLL."""
    return [(cell[x_name], cell["depth"], [(s["prediction"], s["correct"], s.get("answer_nll", 0.0))
                                           for s in cell["samples"]])
            for cell in results["cells"]]
