import subprocess
import sys

import pytest

from longvila.config import parse_stage_args
from longvila.errors import ConfigError


def test_recipe_defaults_and_flag_override(tmp_path):
    args = parse_stage_args("s4_context_ext", ["--output_dir", str(tmp_path), "--max_steps", "3"])
    assert args.train.max_steps == 3
    assert args.model.rope_theta == 1_000_000
    assert args.recipe.name == "s4_context_ext.yaml"


@pytest.mark.parametrize("flags, message", [
    (["--seq_parallel_size", "4", "--seq_parallel_ring_size", "3"], "not divisible by --seq_parallel_ring_size"),
    (["--lr_scheduler_type", "bogus"], "--lr_scheduler_type must be one of"),
    (["--init_from", "/nonexistent"], "--init_from /nonexistent: no config.json there; expected a VILA-layout checkpoint"),
    (["--seq_parallel_ring_type", "spiral"], "--seq_parallel_ring_type must be one of"),
    (["--max_steps", "0"], "--max_steps must be positive"),
])
def test_impossible_configuration_is_one_line_error(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_stage_args("s1_align", ["--output_dir", str(tmp_path), *flags])


def test_unknown_recipe_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown keys: learning_rat"):
        parse_stage_args("s1_align", ["--recipe", str(recipe), "--output_dir", str(tmp_path)])


def test_command_line_error_is_one_line_before_any_compute(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "longvila.stages.s3_sft", "--output_dir", str(tmp_path), "--warmup_ratio", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["longvila s3_sft: error: --warmup_ratio must be in [0, 1), got 2.0"]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_unknown_flag_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "longvila.stages.s1_align", "--output_dir", str(tmp_path), "--learning_rat", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["longvila s1_align: error: unrecognized arguments: --learning_rat 1"]
