"""``longvila plan`` end to end: the table, --json, exit codes, one-line errors, and a command the stage accepts."""

import json
import shlex

import pytest

from longvila.plan.cli import main


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_one_million_tokens_on_eight_80gb_gpus(capsys):
    code, out, _ = _run(capsys, "--model", "qwen2-7b", "--model_max_length", "1048576", "--gpus", "8",
                        "--gpu_memory_gb", "80")
    assert code == 0
    for part in ("layout     SP 8", "memory per GPU (GiB)", "optimizer state", "checkpointed activations",
                 "peak (backward)", "step time (s)", "attention", "reach", "command",
                 "torchrun --nnodes 1 --nproc_per_node 8 -m longvila.stages.s4_context_ext"):
        assert part in out, part
    # Qwen2-7B's 28 q heads cannot split over 8 Ulysses ranks: that layout is ruled out with the trainer's words.
    assert "SP 8 (ulysses 8 x ring 1) x DP 1: num q heads 28 is not divisible by the ulysses degree 8" in out
    assert "--rope_theta 3580165449" in out


def test_video_form_counts_frames_and_json_has_the_contract(capsys):
    code, out, _ = _run(capsys, "--model", "qwen2-7b", "--num_video_frames", "1024", "--gpus", "32",
                        "--device", "H200-141GB", "--json")
    result = json.loads(out)
    assert code == 0 and result["fits"]
    assert result["tokens"] == 1024 * 197 + 256 and result["frames"] == 1024
    assert 0 < result["peak_memory_gb"] < result["usable_memory_gb"]
    memory = result["layout"]["memory_gib"]
    # The default chunked tower keeps nothing through the LLM's backward; its recompute is the vision backward's.
    assert memory["vision_tower_gib"] == 0 and memory["vision_transient_gib"] > 0
    assert memory["video_pixels_gib"] > 0 and memory["video_features_gib"] > 0
    assert memory["vision_backward_gib"] > 0
    assert "-m longvila.stages.s5_long_video_sft" in result["command"]
    assert "--num_video_frames 1024" in result["command"] and "--nnodes 4" in result["command"]
    assert result["max_frames"] >= 1024


VIDEO_2048 = ["--model", "qwen2-7b", "--vision_tower", "siglip-so400m", "--num_video_frames", "2048", "--gpus", "8",
              "--gpu_memory_gb", "80"]


def test_the_old_mmsp_path_counts_what_every_rank_replicates(capsys):
    """The old path (gather, unchunked tower) keeps every frame's pixels (the batch and the tower's input) and the
    tower's per-layer checkpoints of all the rank's frames through the LLM's backward; the gathered features' and
    the whole sequence's gradients, replicated on every rank, come in the vision backward after it (nothing saves
    the features themselves). The new one (route, chunked tower: the default) holds none of them, so at the same
    layout it needs 10 GiB less and reaches twice as far."""
    old_path = ["--mmsp_impl", "gather", "--vision_chunk_frames", "0"]
    code, out, _ = _run(capsys, *VIDEO_2048, *old_path, "--json")
    gather = json.loads(out)
    memory = gather["layout"]["memory_gib"]
    assert code == 0 and gather["layout"]["mmsp_impl"] == "gather"
    assert memory["video_features_gib"] > 5 and memory["vision_tower_gib"] > 10 and memory["video_pixels_gib"] > 3
    assert gather["command"].startswith("# --mmsp_impl gather plans LongVILA's own MM-SP")  # no trainer flag
    fixed = ["--seq_parallel_size", "8", "--seq_parallel_ring_size", "8", "--deepspeed", "zero2", "--lora", "false",
             "--gradient_checkpointing", "true"]
    code, out, _ = _run(capsys, *VIDEO_2048, *fixed, *old_path, "--json")
    old = json.loads(out)
    code, out, _ = _run(capsys, *VIDEO_2048, *fixed, "--vision_chunk_frames", "4")
    assert code == 0
    for part in ("vision tower backward", "video pixels", "video features' gradients", "vision backward",
                 "MM-SP route, tower chunks of 4 frames", "--vision_chunk_frames 4"):
        assert part in out, part
    assert "--mmsp_impl" not in out
    code, out, _ = _run(capsys, *VIDEO_2048, *fixed, "--json")
    new = json.loads(out)
    assert new["peak_memory_gb"] < old["peak_memory_gb"] - 10 and new["max_frames"] > 2 * old["max_frames"]


def test_fixed_layout_that_breaks_a_rule_gets_reasons_and_an_alternative(capsys):
    code, out, _ = _run(capsys, "--model", "qwen2-7b", "--num_video_frames", "2048", "--gpus", "256",
                        "--seq_parallel_size", "28", "--seq_parallel_ring_size", "1")
    assert code == 1
    assert "NO LAYOUT CAN RUN" in out and "world size 256 is not divisible by --seq_parallel_size 28" in out
    assert "instead    with the SP degree left open" in out and "command" in out


def test_nothing_fits_exits_1_and_says_by_how_much(capsys):
    code, out, _ = _run(capsys, "--model", "llama3-8b", "--model_max_length", "4194304", "--gpus", "1",
                        "--deepspeed", "zero2", "--gradient_checkpointing", "true")
    assert code == 1
    assert "DOES NOT FIT" in out and "GiB per rank" in out and "command" not in out


def test_cpu_ranks_share_the_host(capsys):
    """On --device cpu the ranks of one host divide its memory: 24 GiB holds four ZeRO-2 ranks of the 2-layer
    Qwen2-1.5B-shape probe, not twelve."""
    argv = ["--model", "qwen2-1.5b", "--num_layers", "2", "--vision_layers", "2", "--model_max_length", "4096",
            "--device", "cpu", "--gpu_memory_gb", "24", "--seq_parallel_size", "1", "--json"]
    code, out, _ = _run(capsys, *argv, "--gpus", "1")
    assert code == 0 and 9 < json.loads(out)["peak_memory_gb"] < 10.5  # the benchmark measured 9.5-9.9 GiB
    code, out, _ = _run(capsys, *argv, "--gpus", "4")
    assert code == 0 and json.loads(out)["peak_memory_gb"] < json.loads(out)["usable_memory_gb"] == 24 / 4
    assert "--rope_theta" not in json.loads(out)["command"]  # 4,096 tokens: inside the model's trained context
    code, out, _ = _run(capsys, *argv, "--gpus", "12")
    assert code == 1 and not json.loads(out)["fits"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "qwen2-7b", "--gpus", "8"], "give exactly one of --model_max_length (text) and --num_video_frames"),
    (["--model", "nope", "--model_max_length", "8"], "--model nope: no such folder"),
    (["--model", "qwen2-7b", "--model_max_length", "8", "--device", "TPU"], "--device TPU: choose one of"),
    (["--model", "qwen2-7b", "--model_max_length", "8", "--device", "cpu", "--gradient_checkpointing", "offload"],
     "offload needs CUDA"),
])
def test_bad_requests_are_one_line_exit_2(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_the_command_is_accepted_by_the_stage_parser(capsys):
    from longvila.config import parse_stage_args
    from longvila.model.tiny import tiny_model_path

    _, out, _ = _run(capsys, "--model", "llama3-8b", "--model_max_length", "600000", "--gpus", "16", "--json")
    command = json.loads(out)["command"]
    tokens = shlex.split(command.replace("$INIT_FROM", str(tiny_model_path())).replace("$NODE_RANK", "0")
                         .replace("$MASTER_ADDR", "localhost"))
    stage = tokens[tokens.index("-m") + 1].rsplit(".", 1)[1]
    args = parse_stage_args(stage, tokens[tokens.index("-m") + 2:])
    assert args.data.model_max_length == 600000 and args.train.deepspeed in ("zero2", "zero2_offload", "zero3",
                                                                             "zero3_offload")
    assert tokens[:4] == ["torchrun", "--nnodes", "2", "--nproc_per_node"]
