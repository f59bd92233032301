"""Predicted peak memory is within 10% of every measured point: the long-context memory benchmark's stored rows,
and a live fp32 CPU stage-4 run of a real-shape probe made here."""

import json
from pathlib import Path

import pytest

from longvila.plan.measured import compare_benchmark_rows, live_comparison

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


@pytest.mark.slow
def test_live_cpu_stage4_step_is_predicted_within_10_percent(probe_checkpoint, tmp_path, subprocess_env):
    """Qwen2-0.5B layer shapes with the real 151,936-token vocabulary (a shape no stored row measured), one decoder
    layer, fp32, one process, 1,024 tokens: about half a minute on two cores."""
    comparison = live_comparison(probe_checkpoint, tmp_path, env=subprocess_env)
    assert abs(comparison.error) <= BOUND, (comparison.predicted.as_dict(), comparison.measured_gib)
