"""End-to-end stage runs on the embedded default: freezing, saved config, resume, DP equivalence, bad data."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from longvila.cli import stage_spec
from longvila.engine.metrics import METRIC_KEYS, read_metrics
from longvila.model.checkpoint import load_vila
from longvila.model.tiny import tiny_model_path
from longvila.stages.common import run_stage

COMPONENTS = {"vision_tower": "vision_tower", "mm_projector": "mm_projector", "llm": "llm"}


def component_state(model, part):
    return {k: v.detach().clone() for k, v in getattr(model, part).state_dict().items()}


@pytest.mark.parametrize("stage", ["s1_align", "s2_pretrain", "s3_sft", "s4_context_ext", "s5_long_video_sft"])
def test_stage_trains_exactly_its_parts_and_saves_vila_layout(stage, stage_data, stage_flags, tmp_path):
    spec = stage_spec(stage)
    run = run_stage(spec, stage_flags(stage, tmp_path / stage, "--learning_rate", "1e-2"))
    records = read_metrics(run.output_dir)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert set(METRIC_KEYS) <= set(record)
        assert math.isfinite(record["loss"]) and record["num_tokens"] > 0
    for sub in ("config.json", "llm/config.json", "vision_tower/config.json", "mm_projector/config.json"):
        assert (run.output_dir / sub).is_file(), sub

    before, _, _ = load_vila(tiny_model_path())
    after, _, _ = load_vila(run.output_dir)
    for part in COMPONENTS:
        old, new = component_state(before, part), component_state(after, part)
        changed = any(not torch.equal(old[k], new[k]) for k in old)
        assert changed == (part in spec.trains), f"{stage}: {part} changed={changed}"


def test_context_extension_writes_rope_and_length(stage_data, stage_flags, tmp_path):
    out = tmp_path / "s4"
    run_stage(stage_spec("s4_context_ext"), stage_flags("s4_context_ext", out, "--rope_theta", "2.5e6",
                                                       "--model_max_length", "6000", "--max_steps", "1"))
    llm_config = json.loads((out / "llm" / "config.json").read_text())
    assert llm_config["rope_parameters"]["rope_theta"] == 2.5e6
    assert llm_config["max_position_embeddings"] >= 6000
    top = json.loads((out / "config.json").read_text())
    assert top["model_max_length"] == 6000 and top["tune_language_model"] and not top["tune_vision_tower"]
    model, tokenizer, _ = load_vila(out)
    assert tokenizer.model_max_length == 6000
    assert model.llm.config.rope_parameters["rope_theta"] == 2.5e6


def test_lora_context_extension_merges_into_llm(stage_data, stage_flags, tmp_path):
    out = tmp_path / "s4-lora"
    run_stage(stage_spec("s4_context_ext"), stage_flags("s4_context_ext", out, "--lora_llm", "true",
                                                       "--learning_rate", "1e-2"))
    names = set(json.loads((out / "llm" / "model.safetensors.index.json").read_text())["weight_map"]) \
        if (out / "llm" / "model.safetensors.index.json").exists() else None
    model, _, _ = load_vila(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert names is None or not any("lora" in name for name in names)
    base, _, _ = load_vila(tiny_model_path())
    q_new = model.llm.get_decoder().layers[0].self_attn.q_proj.weight
    q_old = base.llm.get_decoder().layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_new, q_old), "merged LoRA delta must reach the saved q_proj"
    assert torch.equal(model.vision_tower.state_dict()["embeddings.patch_embedding.weight"],
                       base.vision_tower.state_dict()["embeddings.patch_embedding.weight"])


def test_resume_replays_the_uninterrupted_loss_sequence(stage_data, stage_flags, tmp_path):
    spec = stage_spec("s3_sft")
    full = run_stage(spec, stage_flags("s3_sft", tmp_path / "full", "--max_steps", "6",
                                       "--save_steps", "3", "--gradient_accumulation_steps", "2"))
    resumed = run_stage(spec, stage_flags("s3_sft", tmp_path / "resumed", "--max_steps", "6",
                                          "--gradient_accumulation_steps", "2", "--resume_from_checkpoint",
                                          str(tmp_path / "full" / "checkpoints" / "step-3")))
    expected = [r["loss"] for r in full.history[3:]]
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    assert [r["loss"] for r in resumed.history] == pytest.approx(expected, rel=1e-6)


def test_two_data_parallel_ranks_equal_one_process(stage_data, stage_flags, subprocess_env, tmp_path):
    """torchrun with 2 DP ranks x batch 1 gives the losses of one process with batch 2 (same global batch)."""
    single = run_stage(stage_spec("s4_context_ext"), stage_flags(
        "s4_context_ext", tmp_path / "single", "--max_steps", "3", "--per_device_train_batch_size", "2"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "longvila.stages.s4_context_ext",
               *stage_flags("s4_context_ext", tmp_path / "ddp", "--max_steps", "3",
                            "--per_device_train_batch_size", "1")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = read_metrics(tmp_path / "ddp")
    assert [r["num_tokens"] for r in ddp] == [r["num_tokens"] for r in single.history]
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single.history], rel=1e-4)


def _video_records(stage_data):
    text = stage_data["video"].read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_bad_samples_are_skipped_and_counted(stage_data, stage_flags, tmp_path):
    records = _video_records(stage_data)
    root = stage_data["video"].parent
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(2048))
    bad = [dict(records[0], video=str(tmp_path / "missing.mp4")), dict(records[1], video=str(corrupt))]
    records = [dict(r, video=str(root / r["video"])) for r in records]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join([json.dumps(r) for r in records[:4] + bad] + ["{not json"]) + "\n")
    flags = stage_flags("s5_long_video_sft", tmp_path / "out", "--max_steps", "4")
    flags[flags.index("--data_path") + 1] = str(data)
    run = run_stage(stage_spec("s5_long_video_sft"), flags)
    skipped = [r["skipped_samples"] for r in run.history]
    assert skipped[-1] >= 3  # the malformed line plus both bad videos (4 steps x 2 samples cover the epoch)
    assert skipped == sorted(skipped)


def test_all_bad_dataset_stops_with_one_clear_error(stage_data, stage_flags, subprocess_env, tmp_path):
    data = tmp_path / "bad.jsonl"
    rec = _video_records(stage_data)[0]
    data.write_text("\n".join(json.dumps(dict(rec, video=str(tmp_path / f"gone{i}.mp4"))) for i in range(3)) + "\n")
    flags = stage_flags("s5_long_video_sft", tmp_path / "out")
    flags[flags.index("--data_path") + 1] = str(data)
    result = subprocess.run([sys.executable, "-m", "longvila.stages.s5_long_video_sft", *flags],
                            capture_output=True, text=True, timeout=300, env=subprocess_env)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("longvila")]
    assert len(error_lines) == 1 and "failed to load" in error_lines[0], result.stderr[-2000:]


@pytest.mark.triton
def test_fused_kernels_train_with_the_same_loss_curve(stage_flags, tmp_path):
    """Stage 4 with --fused_kernels (Triton RMSNorm/RoPE/CE; on CPU in the interpreter session) follows the stock
    run's losses to 1e-4 relative over 2 optimizer steps (fp32; the kernels accumulate in a different order)."""
    spec = stage_spec("s4_context_ext")
    runs = [run_stage(spec, stage_flags("s4_context_ext", tmp_path / name, "--max_steps", "2", "--model_max_length",
                                        "32", "--learning_rate", "1e-3", *extra))
            for name, extra in (("stock", ()), ("fused", ("--fused_kernels", "true")))]
    stock, fused = ([r["loss"] for r in run.history] for run in runs)
    assert fused == pytest.approx(stock, rel=1e-4)
    assert fused[-1] < fused[0]


def test_fused_kernels_where_triton_cannot_run_is_one_line_error(stage_flags, subprocess_env, tmp_path):
    """Without CUDA or the interpreter the fused modules would silently run their torch references: the stage
    refuses --fused_kernels with one line and exit code 2, before loading the model."""
    if torch.cuda.is_available():
        pytest.skip("Triton can run on this machine's CUDA device")
    env = {k: v for k, v in subprocess_env.items() if k != "TRITON_INTERPRET"}
    flags = stage_flags("s4_context_ext", tmp_path / "out", "--fused_kernels", "true")
    result = subprocess.run([sys.executable, "-m", "longvila.stages.s4_context_ext", *flags],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("longvila")]
    assert len(error_lines) == 1 and "--fused_kernels" in error_lines[0] and "TRITON_INTERPRET=1" in error_lines[0]
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_non_finite_loss_stops_with_one_line_naming_the_last_checkpoint(stage_flags, subprocess_env, tmp_path):
    """A diverging run (learning rate 1e30) stops at the first non-finite loss: one line naming the step and the
    last complete checkpoint, no final model saved, and the bad step is in metrics.jsonl for the post-mortem."""
    out = tmp_path / "out"
    flags = stage_flags("s4_context_ext", out, "--max_steps", "6", "--save_steps", "1", "--learning_rate", "1e30")
    result = subprocess.run([sys.executable, "-m", "longvila.stages.s4_context_ext", *flags],
                            capture_output=True, text=True, timeout=300, env=subprocess_env)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("longvila")]
    assert len(lines) == 1, result.stderr[-2000:]
    match = re.search(r"training stopped: step (\d+): the loss is (nan|inf)", lines[0])
    assert match, lines[0]
    bad_step = int(match.group(1))
    assert f"checkpoints/step-{bad_step - 1} " in lines[0]
    records = read_metrics(out)
    assert records[-1]["step"] == bad_step and not math.isfinite(records[-1]["loss"])
    assert all(math.isfinite(r["loss"]) for r in records[:-1])
    assert not (out / "config.json").exists()  # the diverged weights were never saved
    assert not (out / "checkpoints" / f"step-{bad_step}").exists()


def test_unwritable_output_dir_fails_before_any_compute(stage_flags, subprocess_env, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    flags = stage_flags("s4_context_ext", blocker / "out")
    result = subprocess.run([sys.executable, "-m", "longvila.stages.s4_context_ext", *flags],
                            capture_output=True, text=True, timeout=300, env=subprocess_env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("longvila")]
    assert len(lines) == 1 and "--output_dir" in lines[0] and "cannot be written" in lines[0], result.stderr[-2000:]
    assert "model loaded" not in result.stderr
