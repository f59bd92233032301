"""Stages train on data mixtures (``--data_mixture`` YAML, ``--data_path a,b``) and report samples per source."""

import json
import subprocess
import sys

import pytest

from longvila.cli import stage_spec
from longvila.engine.metrics import read_metrics
from longvila.stages.common import run_stage


def _records(path):
    text = path.read_text()
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()]


def _write_jsonl(path, records, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(line + "\n" for line in extra_lines))
    return path


def _flags(stage_flags, stage, out, *extra):
    flags = stage_flags(stage, out, *extra)
    at = flags.index("--data_path")
    return flags[:at] + flags[at + 2:]


def test_conversation_mixture_reports_samples_per_source_and_resumes_exactly(stage_data, stage_flags, tmp_path):
    """Captions (weight 0.5, media in their own folder) + instructions (one malformed line) on stage 3: the
    per-source counts sum to the samples trained on, the malformed line is skipped (not consumed) and attributed
    to its source, and a resumed run continues the counts and the losses of the uninterrupted one."""
    (tmp_path / "data").mkdir()
    _write_jsonl(tmp_path / "captions.jsonl", _records(stage_data["caption"])[:8])
    _write_jsonl(tmp_path / "data" / "instruct.jsonl", _records(stage_data["instruction"])[:8], ["{broken"])
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"datasets:\n"
                   f"  - {{path: captions.jsonl, weight: 0.5, media_root: {stage_data['caption'].parent}}}\n"
                   f"  - {{path: data/instruct.jsonl, name: sft, media_root: {stage_data['instruction'].parent}}}\n")
    spec = stage_spec("s3_sft")
    full = run_stage(spec, _flags(stage_flags, "s3_sft", tmp_path / "full", "--data_mixture", str(mix),
                                  "--max_steps", "6", "--save_steps", "3"))
    records = read_metrics(tmp_path / "full")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        counts = record["samples_per_source"]
        assert set(counts) == {"captions", "sft"}
        assert sum(counts.values()) == record["step"] * 2  # cumulative; batch 2, GAS 1, DP 1
        assert record["skipped_per_source"] == {"captions": 0, "sft": 1} and record["skipped_samples"] == 1
    # 6 steps x 2 samples = one epoch of 8 x 0.5 captions + 8 x 1 instructions
    assert records[-1]["samples_per_source"] == {"captions": 4, "sft": 8} and records[-1]["epoch"] == 0

    resumed = run_stage(spec, _flags(stage_flags, "s3_sft", tmp_path / "resumed", "--data_mixture", str(mix),
                                     "--max_steps", "6", "--resume_from_checkpoint",
                                     str(tmp_path / "full" / "checkpoints" / "step-3")))
    assert [r["samples_per_source"] for r in resumed.history] == [r["samples_per_source"] for r in full.history[3:]]
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history[3:]], rel=1e-6)


def test_long_text_mixture_from_a_data_path_list(stage_data, stage_flags, tmp_path):
    """Stage 4 packs each listed file on its own and draws both, one pass each."""
    docs = _records(stage_data["long_text"])
    first = _write_jsonl(tmp_path / "first.jsonl", docs[:6])
    second = _write_jsonl(tmp_path / "second.jsonl", docs[6:])
    run_stage(stage_spec("s4_context_ext"), _flags(stage_flags, "s4_context_ext", tmp_path / "out",
                                                   "--data_path", f"{first},{second}", "--max_steps", "2"))
    last = read_metrics(tmp_path / "out")[-1]
    assert set(last["samples_per_source"]) == {"first", "second"}
    assert sum(last["samples_per_source"].values()) == 4 and last["skipped_per_source"] == {"first": 0, "second": 0}


@pytest.mark.slow
def test_per_source_counts_sum_over_data_parallel_ranks_once(stage_data, stage_flags, subprocess_env, tmp_path):
    """4 ranks as SP=2 x DP=2: the two SP ranks of a group read the same samples, so a step of batch 1 adds 2
    samples (one per DP replica) to the per-source counts, not 4."""
    docs = _records(stage_data["long_text"])
    first = _write_jsonl(tmp_path / "first.jsonl", docs[:6])
    second = _write_jsonl(tmp_path / "second.jsonl", docs[6:])
    flags = _flags(stage_flags, "s4_context_ext", tmp_path / "out", "--data_path", f"{first},{second}",
                   "--max_steps", "2", "--per_device_train_batch_size", "1", "--model_max_length", "300",
                   "--seq_parallel_size", "2")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
               "-m", "longvila.stages.s4_context_ext", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(tmp_path / "out")
    assert [sum(r["samples_per_source"].values()) for r in records] == [2, 4]
