"""The ``longvila`` console script: the five-stage pipeline on the embedded default, and stage listing."""

import json
import subprocess
import sys

from longvila.cli import STAGES
from longvila.engine.metrics import read_metrics


def test_pipeline_runs_all_stages_each_from_the_previous(tmp_path, subprocess_env):
    out = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "longvila.cli", "pipeline", "--output_dir", str(out), "--max_steps", "8",
         "--disable_tqdm", "true"],
        capture_output=True, text=True, timeout=900, env=subprocess_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for index, stage in enumerate(STAGES):
        losses = [r["loss"] for r in read_metrics(out / stage)]
        assert len(losses) == 8, stage
        assert losses[-1] < losses[0], f"{stage}: loss did not fall ({losses})"
        assert (out / stage / "llm" / "config.json").is_file()
        if index:  # provenance: each stage logged that it started from the previous stage's output
            assert f"starting from {out / STAGES[index - 1]}" in result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["stage", "steps", "first"])
    assert [line.split()[0] for line in lines[header + 1 : header + 6]] == list(STAGES)
    s4 = json.loads((out / "s4_context_ext" / "llm" / "config.json").read_text())
    assert s4["rope_parameters"]["rope_theta"] == 1_000_000 and s4["max_position_embeddings"] == 4096


def test_unknown_stage_is_one_line_error(subprocess_env):
    result = subprocess.run([sys.executable, "-m", "longvila.cli", "pipeline", "--output_dir", "x", "--stages",
                             "s1_align,s9_magic"], capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "longvila: error: unknown stage 's9_magic'; choose one of " + ", ".join(STAGES)]


def test_stages_listing(subprocess_env):
    result = subprocess.run([sys.executable, "-m", "longvila.cli", "stages"], capture_output=True, text=True,
                            timeout=120, env=subprocess_env)
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(STAGES)
