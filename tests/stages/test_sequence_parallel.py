"""Sequence-parallel training equals single-process training, loss for loss, for text (s4) and video (s5).

Every layout runs on 4 real gloo ranks under torchrun; the reference is one process on the same global
batch (SP ranks share a batch, so SP=4 compares with batch 1, SP=2 x DP=2 with batch 2). fp32 on CPU; every metric
column that is not a timing or memory measurement must agree: counts exactly (supervised tokens, real positions of
the expanded sequence, skipped samples, epoch), losses and grad norms to 1e-5 relative at every one of 10 steps.
Stage 5's samples each hold an image and a video, and its tower encodes 1-frame chunks recomputed in the backward.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from longvila.cli import stage_spec
from longvila.engine.dist import child_environment
from longvila.engine.metrics import METRIC_KEYS, read_metrics
from longvila.stages.common import run_stage

WORKER = Path(__file__).with_name("sp_equivalence_worker.py")
STEPS = "10"
# Measurements of this run on this machine; every other column must equal the single process's.
MEASURED = {"tokens_per_sec", "step_seconds", "max_memory_gb", "step_peak_memory_gb", "data_seconds", "decode_seconds"}
EXACT = ("step", "num_tokens", "num_positions", "skipped_samples", "epoch")
sys.path.insert(0, str(WORKER.parent))
from sp_equivalence_worker import LAYOUTS, stage_flags  # noqa: E402


@pytest.fixture(scope="module")
def sp_runs(stage_data, mixed_media_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sp-runs")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", str(WORKER),
               str(root), str(stage_data["long_text"]), str(mixed_media_data), STEPS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=child_environment())
    assert result.returncode == 0, result.stderr[-4000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["s4_context_ext", "s5_long_video_sft"])
def test_every_layout_matches_single_process(stage, stage_data, mixed_media_data, sp_runs, tmp_path):
    references = {}
    data = stage_data["long_text"] if stage == "s4_context_ext" else mixed_media_data  # s5: image + video each
    for batch in (1, 2):
        flags = stage_flags(stage, str(data), tmp_path / f"single-b{batch}", STEPS)
        flags[flags.index("--per_device_train_batch_size") + 1] = str(batch)
        references[batch] = run_stage(stage_spec(stage), flags).history
    for name in LAYOUTS:
        reference = references[2 if name == "sp2dp2" else 1]
        records = read_metrics(sp_runs / stage / name)
        assert len(records) == int(STEPS), name
        columns = set(records[0]) - MEASURED
        assert columns == set(reference[0]) - MEASURED and set(METRIC_KEYS) - MEASURED <= columns, name
        for key in EXACT:
            assert [r[key] for r in records] == [r[key] for r in reference], (name, key)
        for key, rel in (("loss", 1e-5), ("learning_rate", 1e-9), ("grad_norm", 1e-5)):
            got, want = [r[key] for r in records], [r[key] for r in reference]
            worst = max(abs(g - w) / max(abs(w), 1e-300) for g, w in zip(got, want))
            assert got == pytest.approx(want, rel=rel), (name, key, f"worst relative difference {worst:.2e}")
        assert set(columns) <= set(EXACT) | {"loss", "learning_rate", "grad_norm"}, name  # nothing left unchecked
        for record in records:  # throughput is the positions counted above over the step's time
            assert record["tokens_per_sec"] == pytest.approx(record["num_positions"] / record["step_seconds"])


@pytest.mark.slow
def test_bad_layout_is_one_line_error(stage_data, subprocess_env, tmp_path):
    """SP=4 on a world of 1 cannot be laid out; the run stops with one line before building anything."""
    flags = stage_flags("s4_context_ext", str(stage_data["long_text"]), tmp_path / "bad", "1")
    result = subprocess.run([sys.executable, "-m", "longvila.stages.s4_context_ext", *flags,
                             "--seq_parallel_size", "4"], capture_output=True, text=True, timeout=300,
                            env=subprocess_env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("longvila")]
    assert lines == ["longvila s4_context_ext: error: world size 1 is not divisible by --seq_parallel_size 4"], \
        result.stderr[-2000:]
