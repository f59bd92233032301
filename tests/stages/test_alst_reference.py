"""DeepSpeed's ALST as an outside reference for our sequence parallelism.

Stage 4 at Ulysses SP=2 on 2 gloo ranks and ALST (``benchmarks/alst_step.py``: UlyssesSPAttentionHF, TiledMLP,
TiledFusedLogitsLoss, its data adapter) train the same tiny LLM on the same tokens with the same optimizer and
schedule. Every packed row here holds one document (128-token rows from ~300-token documents), where ALST's
attention, which ignores document boundaries, means the same thing as ours; so the per-step losses and grad norms must agree.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longvila.engine.metrics import read_metrics
from longvila.model.tiny import tiny_model_path

ALST_STEP = Path(__file__).resolve().parents[2] / "benchmarks" / "alst_step.py"
LENGTH, STEPS = 128, 4


def torchrun(args, env):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_stage4_ulysses_matches_deepspeed_alst_step_for_step(stage_data, subprocess_env, tmp_path):
    data = stage_data["long_text"]
    torchrun(["-m", "longvila.stages.s4_context_ext", "--init_from", str(tiny_model_path()),
              "--output_dir", str(tmp_path / "ours"), "--data_path", str(data), "--max_steps", str(STEPS),
              "--model_max_length", str(LENGTH), "--per_device_train_batch_size", "1", "--bf16", "false",
              "--gradient_checkpointing", "true", "--seq_parallel_size", "2", "--seq_parallel_ring_size", "1",
              "--disable_tqdm", "true"], subprocess_env)
    torchrun([str(ALST_STEP), "--checkpoint", str(tiny_model_path()), "--data_path", str(data),
              "--length", str(LENGTH), "--steps", str(STEPS), "--out", str(tmp_path / "alst")], subprocess_env)
    ours = read_metrics(tmp_path / "ours")
    alst = [json.loads(line) for line in (tmp_path / "alst" / "alst_metrics.jsonl").read_text().splitlines()]
    assert [r["num_tokens"] for r in alst] == [r["num_tokens"] for r in ours]
    assert len(ours) == STEPS
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in alst] == pytest.approx([r[key] for r in ours], rel=1e-5), key


PROFILER = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_second_step.py"
ATTENTION_FORWARD = "aten::_scaled_dot_product_flash_attention_for_cpu"


def profiled_calls(out: Path, op: str) -> int:
    rows = json.loads((out / "profile" / "profile_rank0.json").read_text())
    return sum(row["calls"] for row in rows if row["op"] == op)


@pytest.mark.slow
def test_both_systems_recompute_every_layer_in_the_profiled_step(stage_data, subprocess_env, tmp_path):
    """Equal work, counted: in one profiled step (``benchmarks/profile_second_step.py``) each system runs every
    decoder layer's attention twice, once forward and once in the checkpoint recompute. The ALST runner once left
    the model in eval mode, where HF skips gradient checkpointing, and ran it once per layer."""
    data, layers = stage_data["long_text"], json.loads((tiny_model_path() / "llm" / "config.json").read_text())[
        "num_hidden_layers"]
    torchrun([str(PROFILER), "--out", str(tmp_path / "ours" / "profile"), "-m", "longvila.stages.s4_context_ext",
              "--init_from", str(tiny_model_path()), "--output_dir", str(tmp_path / "ours"), "--data_path", str(data),
              "--max_steps", "2", "--model_max_length", str(LENGTH), "--per_device_train_batch_size", "1",
              "--bf16", "false", "--gradient_checkpointing", "true", "--seq_parallel_size", "2",
              "--seq_parallel_ring_size", "1", "--disable_tqdm", "true"], subprocess_env)
    torchrun([str(PROFILER), "--out", str(tmp_path / "alst" / "profile"), str(ALST_STEP), "--checkpoint",
              str(tiny_model_path()), "--data_path", str(data), "--length", str(LENGTH), "--steps", "2", "--out",
              str(tmp_path / "alst")], subprocess_env)
    assert profiled_calls(tmp_path / "ours", ATTENTION_FORWARD) == 2 * layers
    assert profiled_calls(tmp_path / "alst", ATTENTION_FORWARD) == 2 * layers
