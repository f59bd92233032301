"""``longvila chat`` on the embedded default: its KV-cached answer equals the model's own full-forward greedy decoding
of the same prompt (text only, an image, a decord-decoded video), the console script prints just that answer, and
every bad request is one stderr line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from longvila import chat
from longvila.data.synthetic import write_video
from longvila.data.template import encode_prompt
from longvila.data.video import load_video
from longvila.eval.scoring import greedy_generate, stop_token_ids, swapped

QUESTION = "What colour is the shape that appears in the video?"


@pytest.fixture(scope="module")
def tiny_path():
    from longvila.model.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="module")
def loaded(tiny_path):
    from longvila.model.checkpoint import load_vila

    model, tokenizer, image_processor = load_vila(tiny_path)
    return model.eval(), tokenizer, image_processor


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat-image") / "shape.png"
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    """16 frames of 64x64, each a different flat colour, at 8 fps (PyAV / libx264)."""
    path = tmp_path_factory.mktemp("chat-video") / "clip.mp4"
    colours = np.random.default_rng(1).integers(0, 256, (16, 1, 1, 3))
    write_video(path, np.broadcast_to(colours, (16, 64, 64, 3)).astype(np.uint8), fps=8)
    return path


def reference_answer(loaded, question: str, placeholder: str = "", frames=None, max_new_tokens: int = 12):
    """Built independently of longvila.chat: the training chat format, the image processor, and one full forward
    per generated token (no cache). Returns (text, generated ids)."""
    model, tokenizer, image_processor = loaded
    ids = torch.tensor(encode_prompt(tokenizer, [{"from": "human", "value": placeholder + question}]))
    media = None
    if frames is not None:
        pixels = image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        media = [[torch.as_tensor(pixels, dtype=torch.float32)]]
    generated = greedy_generate(model, ids, stop_token_ids(tokenizer), max_new_tokens, media=media, kv_cache=False)
    return tokenizer.decode(generated, skip_special_tokens=True).strip(), generated


def _check(loaded, expected, generated, **kwargs):
    assert len(set(generated)) > 2, "the reference continuation is degenerate; the comparison would prove little"
    assert chat.answer(*loaded, max_new_tokens=12, **kwargs) == expected


def test_text_only_answer_equals_full_forward_greedy(loaded):
    expected, generated = reference_answer(loaded, "What is the pass key?")
    _check(loaded, expected, generated, question="What is the pass key?")


def test_image_answer_equals_full_forward_greedy(loaded, png):
    expected, generated = reference_answer(loaded, "What is in the image?", "<image>\n",
                                           [Image.open(png).convert("RGB")])
    _check(loaded, expected, generated, question="What is in the image?", image=png)


def test_video_answer_equals_full_forward_greedy(loaded, mp4):
    """Default frame count = the checkpoint's num_video_frames (8), decoded with decord."""
    model = loaded[0]
    assert model.config["num_video_frames"] == 8
    frames = load_video(mp4, 8)
    expected, generated = reference_answer(loaded, QUESTION, "<video>\n", frames)
    seen = []

    def recording(pixels):
        seen.append(tuple(pixels.shape))
        return model.encode_frames(pixels)

    with swapped(model, frame_encoder=recording):
        _check(loaded, expected, generated, question=QUESTION, video=mp4)
        chat.answer(*loaded, question=QUESTION, video=mp4, num_video_frames=3, max_new_tokens=1)
    assert seen == [(8, 3, 64, 64), (3, 3, 64, 64)]


def test_console_script_prints_only_the_answer(tiny_path, loaded, mp4, subprocess_env):
    expected, _ = reference_answer(loaded, QUESTION, "<video>\n", load_video(mp4, 4), max_new_tokens=10)
    result = subprocess.run(
        [sys.executable, "-m", "longvila.cli", "chat", "--model", str(tiny_path), "--video", str(mp4),
         "--num_video_frames", "4", "--max_new_tokens", "10", QUESTION],
        capture_output=True, text=True, timeout=300, env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == expected + "\n"
    assert "longvila.chat: loaded" in result.stderr


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        chat.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert captured.out == ""
    assert lines[0].startswith("longvila chat: error: ")
    return lines[0]


@pytest.mark.parametrize("case, message", [
    ("missing_model", "--model folder not found"),
    ("no_config", "is not a checkpoint folder (no config.json)"),
    ("not_vila", "not a VILA"),
    ("bad_json", "config.json is not valid JSON"),
    ("missing_image", "--image file not found"),
    ("missing_video", "--video file not found"),
    ("both_media", "not allowed with argument"),
    ("no_model_flag", "the following arguments are required: --model"),
    ("no_question", "the following arguments are required: question"),
    ("placeholder_in_question", "must not contain a media placeholder"),
    ("zero_frames", "--num_video_frames must be >= 1"),
])
def test_bad_requests_are_one_line_and_exit_2(capsys, tmp_path, tiny_path, png, mp4, case, message):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    model = ["--model", str(tiny_path)]
    argv = {
        "missing_model": ["--model", str(tmp_path / "nowhere"), "Q?"],
        "no_config": ["--model", str(folder), "Q?"],
        "not_vila": ["--model", str(folder), "Q?"],
        "bad_json": ["--model", str(folder), "Q?"],
        "missing_image": [*model, "--image", str(tmp_path / "gone.png"), "Q?"],
        "missing_video": [*model, "--video", str(tmp_path / "gone.mp4"), "Q?"],
        "both_media": [*model, "--image", str(png), "--video", str(mp4), "Q?"],
        "no_model_flag": ["Q?"],
        "no_question": model,
        "placeholder_in_question": [*model, "--image", str(png), "<image>\nQ?"],
        "zero_frames": [*model, "--video", str(mp4), "--num_video_frames", "0", "Q?"],
    }[case]
    if case == "not_vila":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    if case == "bad_json":
        (folder / "config.json").write_text("{not json")
    assert message in _one_line_error(capsys, argv)


def test_console_script_bad_request(tmp_path, subprocess_env):
    result = subprocess.run([sys.executable, "-m", "longvila.cli", "chat", "--model", str(tmp_path / "nowhere"),
                             "Q?"], capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"longvila chat: error: --model folder not found: "
                                                  f"{tmp_path / 'nowhere'}"]
