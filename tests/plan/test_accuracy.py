"""Predicted peak memory is within 10% of every measured point: the long-context memory benchmark's stored rows,
and a live fp32 CPU stage-4 run of a real-shape probe made here."""

import json
from pathlib import Path

import pytest

from longvila.plan.measured import compare_benchmark_rows, predict_cpu_run
from longvila.plan.model_shape import resolve_model_shape

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
    import subprocess
    import sys

    from longvila.engine.metrics import read_metrics

    checkpoint, tokens = probe_checkpoint, 1024
    result = subprocess.run(
        [sys.executable, "-m", "longvila.stages.s4_context_ext", "--init_from", str(checkpoint), "--output_dir",
         str(tmp_path / "run"), "--data_dir", str(tmp_path / "data"), "--max_steps", "2", "--model_max_length",
         str(tokens), "--gradient_checkpointing", "true", "--bf16", "false", "--disable_tqdm", "true"],
        capture_output=True, text=True, timeout=900, env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    second = read_metrics(tmp_path / "run")[1]
    predicted = predict_cpu_run(resolve_model_shape(str(checkpoint)), tokens)
    error = predicted.peak_gib / second["step_peak_memory_gb"] - 1
    assert abs(error) <= BOUND, (predicted.as_dict(), second["step_peak_memory_gb"])
