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
