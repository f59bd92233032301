"""V-NIAH pieces: needle placement in the model's sequence, haystack decoding at an fps, needle sets, outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from longvila.eval.grid import insert_needle, needle_index
from longvila.errors import EvalError
from longvila.eval.vniah import (
    COLOUR_QUESTION,
    VNIAHConfig,
    cached_frame_features,
    encode_haystack,
    fps_frame_indices,
    frame_placeholder,
    load_needle_file,
    needle_prompt,
    photo_needles,
    run_vniah,
    synthetic_needles,
)


@pytest.mark.parametrize("depth", [0, 20, 50, 90, 100])
def test_needle_features_land_at_floor_depth_frame_of_the_model_sequence(tiny_path, depth):
    """Cached haystack features + the needle spliced at floor(depth * n / 100) go through the model's own
    build_sequence: frame k of the video is the needle, every frame is followed by the "\\n" embedding."""
    from longvila.model.checkpoint import load_vila

    model, tokenizer, _ = load_vila(tiny_path)
    n, tokens, hidden = 9, model.tokens_per_frame, model.llm.config.hidden_size
    haystack = (torch.arange(n, dtype=torch.float32) + 1)[:, None, None].expand(n, tokens, hidden)
    needle = torch.full((1, tokens, hidden), -7.0)
    features, k = insert_needle(haystack, needle, depth)
    assert k == needle_index(depth, n) == (depth * n) // 100
    ids, labels = needle_prompt(tokenizer, COLOUR_QUESTION, "Red.")
    original = model.frame_encoder
    with cached_frame_features(model, features):
        seq = model.build_sequence(ids[None], labels[None], None, media=[[frame_placeholder(n + 1)]])
    assert model.frame_encoder == original
    start = int((ids == model.tokenizer_ids.video).nonzero())
    video = seq.inputs_embeds[0, start:start + (n + 1) * (tokens + 1)].reshape(n + 1, tokens + 1, hidden)
    frame_values = video[:, :tokens].mean(dim=(1, 2)).tolist()
    expected = [float(v) for v in range(1, n + 1)]
    expected.insert(k, -7.0)
    assert frame_values == pytest.approx(expected)
    newline = model.llm.get_input_embeddings().weight[model.tokenizer_ids.newline]
    torch.testing.assert_close(video[:, tokens], newline.expand(n + 1, hidden))
    # the answer is supervised right after the expanded video, nowhere else
    answer = tokenizer.encode("Red.", add_special_tokens=False)
    assert seq.labels[0][seq.labels[0] != -100].tolist() == answer
    assert seq.inputs_embeds.shape[1] == len(ids) - 1 + (n + 1) * (tokens + 1)


def test_fps_frame_indices():
    # 30 frames at 10 fps = 3 s; at 2 fps that is 6 frames, every 5th
    indices, available = fps_frame_indices(30, 10.0, 2.0, 100)
    assert indices.tolist() == [0, 5, 10, 15, 20, 25] and available == 6
    assert fps_frame_indices(30, 10.0, 2.0, 4)[0].tolist() == [0, 5, 10, 15]
    assert fps_frame_indices(30, 10.0, None, 7)[0].tolist() == list(range(7))
    assert fps_frame_indices(5, 10.0, 20.0, 100)[0].max() == 4  # faster than native: clamped to the last frame


def _ramp_video(path, num_frames=16, fps=8):
    from longvila.data.synthetic import write_video

    frames = np.stack([np.full((32, 32, 3), 10 + 15 * i, dtype=np.uint8) for i in range(num_frames)])
    write_video(path, frames, fps=fps)


class _Processor:
    def __call__(self, images, return_tensors="pt"):
        return {"pixel_values": torch.tensor(np.stack([np.asarray(im, dtype=np.float32) for im in images]))
                .permute(0, 3, 1, 2)}


def test_haystack_is_decoded_at_fps_encoded_in_batches_and_looped(tmp_path):
    """A 16-frame 8 fps ramp decoded at 4 fps gives frames 0, 2, 4, ...; every batch goes through the model's
    frame_encoder once; a haystack shorter than max_frames is looped."""
    _ramp_video(tmp_path / "ramp.mp4")
    calls = []

    def frame_encoder(pixels):
        calls.append(pixels.shape[0])
        return pixels.mean(dim=(1, 2, 3))[:, None, None]  # one "token": the frame's brightness

    runtime = SimpleNamespace(image_processor=_Processor(), device=torch.device("cpu"), dtype=torch.float32,
                              is_main=True, model=SimpleNamespace(frame_encoder=frame_encoder))
    hay = encode_haystack(runtime, tmp_path / "ramp.mp4", 4.0, 6, batch_size=4, disable_tqdm=True)
    brightness = hay.features[:, 0, 0].tolist()
    assert brightness == pytest.approx([10 + 15 * i for i in (0, 2, 4, 6, 8, 10)], abs=3)
    assert calls == [4, 2] and hay.available_frames == 8 and not hay.looped
    calls.clear()
    looped = encode_haystack(runtime, tmp_path / "ramp.mp4", 1.0, 5, batch_size=32, disable_tqdm=True)
    assert calls == [2] and looped.looped and looped.available_frames == 2  # 2 s at 1 fps: frames 0 and 8
    assert looped.features[:, 0, 0].tolist() == pytest.approx([10, 130, 10, 130, 10], abs=3)
    with pytest.raises(EvalError, match="not found"):
        encode_haystack(runtime, tmp_path / "missing.mp4", 1.0, 5)


def test_needle_sets(tmp_path, needle_file):
    from longvila.data.synthetic import PALETTE, make_video_data

    needles = synthetic_needles()
    record = json.loads(make_video_data(tmp_path / "v", 1, 2).read_text())[0]
    assert [n.answer for n in needles] == [f"{c.capitalize()}." for c in PALETTE]
    assert {n.question for n in needles} == {record["conversations"][0]["value"].split("\n", 1)[1]}
    for needle, colour in zip(needles, PALETTE):
        pixels = np.asarray(needle.image).reshape(-1, 3).astype(int)
        assert (np.abs(pixels - PALETTE[colour]).sum(1) == 0).sum() > 100  # the colour is really there
    users = load_needle_file(needle_file)
    assert [(n.name, n.answer) for n in users] == [(n.name, n.answer) for n in needles[:2]]
    pytest.importorskip("skimage")
    photos = photo_needles()
    assert [n.answer for n in photos] == ["Astronaut", "Cat", "Coffee", "Rocket"]
    assert all(n.image.mode == "RGB" and min(n.image.size) >= 256 for n in photos)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ("[]", "non-empty list"),
    ('[{"image": "a.png", "question": "Q?"}]', "answer"),
    ('[{"image": "missing.png", "question": "Q?", "answer": "A"}]', "cannot read image"),
    ('{"needles": [3]}', "must be an object"),
])
def test_bad_needle_files_fail_with_one_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(EvalError, match=match):
        load_needle_file(path)


def test_run_writes_json_and_heatmap_with_every_cell(tmp_path, needle_file):
    out = tmp_path / "out"
    cfg = VNIAHConfig(output_dir=out, needles=str(needle_file), min_frames=4, max_frames=10, frames_step=3,
                      depth_step=50, disable_tqdm=True)
    results = run_vniah(cfg)
    saved = json.loads((out / "vniah_results.json").read_text())
    assert saved["mean_accuracy"] == results["mean_accuracy"]
    assert saved["axes"]["x"] == [4, 7, 10] and saved["axes"]["depth"] == [0.0, 50.0, 100.0]
    assert len(saved["cells"]) == 9 and saved["num_samples"] == 18
    assert len(saved["accuracy"]) == 3 and all(len(row) == 3 for row in saved["accuracy"])
    assert saved["config"]["needles"][0]["answer"] == "Red." and saved["config"]["haystack"] == "synthetic"
    for cell in saved["cells"]:
        for sample in cell["samples"]:
            assert sample["needle_frame"] == needle_index(cell["depth"], cell["frames"])
            assert sample["num_frames"] == cell["frames"] + 1
            assert sample["correct"] in (True, False) and isinstance(sample["prediction"], str)
        assert cell["accuracy"] == sum(s["correct"] for s in cell["samples"]) / 2
    assert 0.0 <= saved["mean_accuracy"] <= 1.0
    png = (out / "vniah_heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (out / "synthetic_haystack.mp4").is_file()


def test_greedy_generation_agrees_with_teacher_forcing_on_its_own_output(tiny_path):
    """On the real tiny VLM with a cached video: teacher-forcing the greedy continuation reproduces it token for
    token (both read the same causal logits), and with stop tokens the generation is that continuation cut before
    the first of them."""
    from longvila.eval.scoring import greedy_generate, stop_token_ids, teacher_forced
    from longvila.model.checkpoint import load_vila

    model, tokenizer, _ = load_vila(tiny_path)
    n, tokens, hidden = 6, model.tokens_per_frame, model.llm.config.hidden_size
    features = torch.randn(n, tokens, hidden, generator=torch.Generator().manual_seed(0))
    ids, labels = needle_prompt(tokenizer, COLOUR_QUESTION, "Red.")
    prompt = ids[labels == -100]
    media = [[frame_placeholder(n)]]
    with cached_frame_features(model, features):
        free = greedy_generate(model, prompt, set(), max_new_tokens=5, media=media)
        assert len(free) == 5
        target = torch.cat([torch.full_like(prompt, -100), torch.tensor(free)])
        (forced,) = teacher_forced(model, torch.cat([prompt, torch.tensor(free)])[None], target[None], media=media)
        assert forced.predicted_ids == free
        stops = stop_token_ids(tokenizer)
        stopped = greedy_generate(model, prompt, stops, max_new_tokens=5, media=media)
    cut = next((i for i, t in enumerate(free) if t in stops), len(free))
    assert stopped == free[:cut]
    assert stops == {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id} - {None}
