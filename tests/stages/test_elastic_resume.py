"""Elastic resume: a checkpoint written under one world size / SP layout continues under another.

One chain of stage-4 runs (fp32, CPU, gloo), each resuming the previous run's checkpoint on a new layout with the
same global batch of 2 (micro-batch x GAS x DP):

    2 ranks DP 2  ->  1 process (GAS 2)  ->  4 ranks SP 2 x DP 2  ->  4 ranks SP 4 = ring 2 x Ulysses 2 (GAS 2)

so it covers "2 DP -> 1 process", "1 process -> SP 2 x DP 2" and "SP 2 x DP 2 (Ulysses) -> SP 4 (2D)". Every
resumed step must give the uninterrupted run's loss to 1e-5 and train on exactly the same samples
(``--log_sample_ids``).
"""

import subprocess
import sys

import pytest

from longvila.engine.metrics import read_metrics
from tests.stages.sample_logs import read_sample_logs

STEPS = 8
CHAIN = [  # (name, ranks, flags, resumes from the previous run's step)
    ("dp2", 2, ["--per_device_train_batch_size", "1"], None),
    ("single", 1, ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"], 2),
    ("sp2dp2", 4, ["--per_device_train_batch_size", "1", "--seq_parallel_size", "2"], 4),
    ("sp4_2d", 4, ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
                   "--seq_parallel_size", "4", "--seq_parallel_ring_size", "2"], 6),
]


@pytest.mark.slow
def test_resume_across_world_sizes_and_sp_layouts(stage_flags, subprocess_env, tmp_path):
    previous = None
    for name, ranks, layout, from_step in CHAIN:
        flags = stage_flags("s4_context_ext", tmp_path / name, "--max_steps", str(STEPS), "--save_steps", "2",
                            "--save_total_limit", "0", "--learning_rate", "1e-3", "--log_sample_ids", "true",
                            "--model_max_length", "300", *layout)
        if from_step is not None:
            flags += ["--resume_from_checkpoint", str(tmp_path / previous / "checkpoints" / f"step-{from_step}")]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                   "-m", "longvila.stages.s4_context_ext", *flags]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env)
        assert result.returncode == 0, (name, result.stderr[-3000:])
        if from_step is not None:
            assert "resharded step-" in result.stderr, name
        previous = name

    reference, reference_ids = read_metrics(tmp_path / "dp2"), read_sample_logs(tmp_path / "dp2")
    assert [r["step"] for r in reference] == list(range(1, STEPS + 1))
    for name, _, _, from_step in CHAIN[1:]:
        records, ids = read_metrics(tmp_path / name), read_sample_logs(tmp_path / name)
        expected = reference[from_step:]
        assert [r["step"] for r in records] == [r["step"] for r in expected], name
        assert [r["num_tokens"] for r in records] == [r["num_tokens"] for r in expected], name
        assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in expected], abs=1e-5), name
        assert [r["learning_rate"] for r in records] == pytest.approx([r["learning_rate"] for r in expected]), name
        for step in range(from_step + 1, STEPS + 1):  # the same samples, none twice, none skipped
            assert sorted(ids[step]["ids"]) == sorted(reference_ids[step]["ids"]), (name, step)
