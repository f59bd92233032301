"""The ``longvila`` console script: the five-stage pipeline on the embedded default, and stage listing."""

import json
import subprocess
import sys

from longvila.stages import STAGES
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


def test_pipeline_data_flags_go_to_the_stage_they_name():
    from longvila.cli import stage_data_flags

    flags = stage_data_flags(["--max_steps", "2", "--data_path", "s1=captions.json,s3_sft=qa.json,more_qa.json",
                              "--media_root=s3=/media"], STAGES)
    assert flags == {"s1_align": ["--data_path", "captions.json"], "s2_pretrain": [],
                     "s3_sft": ["--data_path", "qa.json,more_qa.json", "--media_root", "/media"],
                     "s4_context_ext": [], "s5_long_video_sft": []}
    # one stage: a plain value is unambiguous
    assert stage_data_flags(["--data_path", "long.jsonl"], ("s4_context_ext",)) == {
        "s4_context_ext": ["--data_path", "long.jsonl"]}


def test_pipeline_refuses_one_data_path_for_every_stage_before_stage_one(tmp_path, subprocess_env):
    """The README's old example gave one file to all five stages; stage 4 then died on a caption file."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "longvila.cli", "pipeline", "--output_dir", str(out),
                             "--data_path", "captions.json"], capture_output=True, text=True, timeout=120,
                            env=subprocess_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "longvila: error: --data_path captions.json: the stages read different data, so name the stage of each "
        "file, e.g. --data_path s1=captions.json,s4=long_text.jsonl (a stage without one trains on the embedded "
        "synthetic data)"]
    assert not out.exists(), "nothing may run before the data flags are settled"


def test_pipeline_refuses_a_stage_it_does_not_run(subprocess_env):
    result = subprocess.run([sys.executable, "-m", "longvila.cli", "pipeline", "--output_dir", "x", "--stages",
                             "s1_align,s2_pretrain", "--data_path", "s4=long.jsonl"], capture_output=True,
                            text=True, timeout=120, env=subprocess_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "longvila: error: --data_path: s4= names a stage this pipeline does not run (s1_align, s2_pretrain)"]


def test_pipeline_errors_name_the_stage(tmp_path, subprocess_env):
    missing = tmp_path / "no_such.jsonl"
    result = subprocess.run([sys.executable, "-m", "longvila.cli", "pipeline", "--output_dir", str(tmp_path / "r"),
                             "--stages", "s4_context_ext", "--data_path", f"s4={missing}"], capture_output=True,
                            text=True, timeout=300, env=subprocess_env)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("longvila: error: stage s4_context_ext: ") and str(missing) in last
