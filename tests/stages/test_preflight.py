"""What a stage decides from configs and folders before any weights load (``longvila/stages/preflight.py``):
requeued jobs resume with ``auto``, ``latest`` with nothing to resume stops at once, and a Ulysses degree the
LLM's heads cannot take is refused once, before loading."""

import json
import subprocess
import sys

import pytest

from longvila.config import parse_stage_args
from longvila.errors import ConfigError
from longvila.distributed.mesh import SequenceParallelConfig
from longvila.errors import CheckpointError
from longvila.stages.preflight import check_sequence_parallel_heads, resolve_resume

LOADED = "model loaded in"  # the stage's log line once the weights are in memory


def run_s4(stage_flags, out, env, *extra, ranks=1):
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
              if ranks > 1 else [sys.executable])
    return subprocess.run([*launch, "-m", "longvila.stages.s4_context_ext", *stage_flags("s4_context_ext", out),
                           *extra], capture_output=True, text=True, timeout=600, env=env)


def test_latest_with_nothing_to_resume_stops_before_loading(stage_flags, subprocess_env, tmp_path):
    result = run_s4(stage_flags, tmp_path / "run", subprocess_env, "--resume_from_checkpoint", "latest")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"longvila s4_context_ext: training stopped: --resume_from_checkpoint latest: no complete checkpoint under "
        f"{tmp_path / 'run' / 'checkpoints'} (--resume_from_checkpoint auto starts fresh when there is none)")
    assert LOADED not in result.stderr


def test_auto_starts_fresh_then_resumes_on_the_same_command(stage_flags, subprocess_env, tmp_path):
    """A cluster requeues a job with the same command: the first launch starts fresh, the next resumes."""
    flags = ("--resume_from_checkpoint", "auto", "--save_steps", "1")
    first = run_s4(stage_flags, tmp_path / "run", subprocess_env, *flags)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "--resume_from_checkpoint auto: no complete checkpoint under" in first.stderr
    second = run_s4(stage_flags, tmp_path / "run", subprocess_env, *flags)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (f"--resume_from_checkpoint auto: resuming from {tmp_path / 'run' / 'checkpoints' / 'step-2'} (step 2)"
            in second.stderr)


def test_resume_requests_are_settled_from_the_folders(tmp_path):
    args = parse_stage_args("s4_context_ext", ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "auto"])
    assert resolve_resume(args) is None
    args.train.resume_from_checkpoint = "latest"
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume(args)


def write_llm_config(folder, heads, kv_heads):
    (folder / "llm").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_llama", "llm_cfg": {}}))  # VILA layout
    (folder / "llm" / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "num_attention_heads": heads, "num_key_value_heads": kv_heads}))
    return folder


@pytest.mark.parametrize("heads,kv_heads,sp,ring,ok", [(8, 2, 4, 1, True), (8, 2, 3, 1, False),
                                                      (12, 2, 4, 1, True), (12, 2, 8, 1, False),
                                                      (12, 2, 8, 2, True), (28, 4, 14, 1, False)])
def test_head_counts_are_checked_from_the_config(tmp_path, heads, kv_heads, sp, ring, ok):
    folder = write_llm_config(tmp_path / "ckpt", heads, kv_heads)
    args = parse_stage_args("s4_context_ext", ["--output_dir", str(tmp_path / "out"), "--init_from", str(folder)])
    parallel = SequenceParallelConfig(sp_size=sp, ring_size=ring)
    if ok:
        check_sequence_parallel_heads(args, parallel, lambda: tmp_path / "unused")
    else:
        with pytest.raises(ConfigError, match=f"--seq_parallel_size {sp} \\(ulysses {sp // ring}\\)"):
            check_sequence_parallel_heads(args, parallel, lambda: tmp_path / "unused")


def test_indivisible_heads_stop_before_loading_and_are_said_once(stage_flags, subprocess_env, tmp_path):
    """The embedded default has 8 query heads: Ulysses over 3 ranks cannot split them."""
    result = run_s4(stage_flags, tmp_path / "run", subprocess_env, "--seq_parallel_size", "3",
                    "--seq_parallel_ring_size", "1", ranks=3)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "s4_context_ext: error:" in line]
    assert errors == ["longvila s4_context_ext: error: --seq_parallel_size 3 (ulysses 3): num q heads 8 is not divisible by "
                      "the ulysses degree 3 (seq_parallel_size / seq_parallel_ring_size); use a ring size that "
                      "makes it divide"], result.stderr[-3000:]
    assert LOADED not in result.stderr
