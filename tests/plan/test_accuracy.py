"""Predicted peak memory is within 10% of every measured point: the long-context memory benchmark's stored rows,
the long-video memory benchmark's old and new rows (stage 5, SP 1 and SP 2), and a live fp32 CPU stage-4 run of a
real-shape probe made here."""

import json
from pathlib import Path

import pytest

from longvila.plan.measured import compare_benchmark_rows, compare_video_rows, live_comparison

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
BOUND = 0.10


def test_every_stored_measurement_is_predicted_within_10_percent():
    files = sorted(RESULTS.glob("cpu-*-long-context-memory*.json"))
    assert len(files) >= 3
    comparisons = [c for path in files for c in compare_benchmark_rows(json.loads(path.read_text()))]
    assert len(comparisons) >= 20
    worst = max(comparisons, key=lambda c: abs(c.error))
    assert abs(worst.error) <= BOUND, (worst.label, worst.tokens, worst.measured_gib, worst.predicted.peak_gib)
    # Both phases set the peak somewhere in the measured range, so both are checked.
    assert {c.predicted.peak_phase for c in comparisons} == {"backward", "optimizer step"}


VIDEO_RESULTS = {1: "cpu-2026-12-05-long-video-memory-sp1.json", 2: "cpu-2026-12-05-long-video-memory-sp2.json"}
"""``benchmarks/long_video_memory.py``'s files (``long_video_memory_sp<N>.json``) for the probe
qwen2-0.5b-1L-siglip-1L, fp32 CPU, stage 5."""


@pytest.mark.parametrize("sp", sorted(VIDEO_RESULTS))
def test_long_video_step_peaks_are_predicted_within_10_percent(sp):
    """Every old (gather, unchunked tower) and new (route, 8-frame chunks) row, at every frame count; new_ahead
    rows are not predicted (``longvila.plan.measured.VIDEO_SYSTEMS``: loading ahead is host memory)."""
    path = RESULTS / VIDEO_RESULTS[sp]
    if not path.is_file():
        pytest.skip(f"{path.name} is not committed yet: run benchmarks/long_video_memory.py --sp {sp} and copy its "
                    f"long_video_memory_sp{sp}.json there")
    comparisons = compare_video_rows(json.loads(path.read_text())["rows"])
    assert {c.sp for c in comparisons} == {sp}
    for system in ("old", "new"):
        frames = {c.label for c in comparisons if f", {system}, " in c.label}
        assert len(frames) >= 2, f"{path.name}: {system} needs two frame counts, has {sorted(frames)}"
    worst = max(comparisons, key=lambda c: abs(c.error))
    assert abs(worst.error) <= BOUND, (worst.label, worst.measured_gib, worst.predicted.as_dict())


@pytest.mark.slow
def test_live_cpu_stage4_step_is_predicted_within_10_percent(probe_checkpoint, tmp_path, subprocess_env):
    """Qwen2-0.5B layer shapes with the real 151,936-token vocabulary (a shape no stored row measured), one decoder
    layer, fp32, one process, 1,024 tokens: about half a minute on two cores."""
    comparison = live_comparison(probe_checkpoint, tmp_path, env=subprocess_env)
    assert abs(comparison.error) <= BOUND, (comparison.predicted.as_dict(), comparison.measured_gib)
