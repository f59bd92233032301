import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from longvila.constants import IGNORE_INDEX
from longvila.data.datasets import ConversationDataset

LOGGER = "longvila.data"


def write_jsonl(path, records, extra_lines=()):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


@pytest.fixture
def media_dir(tmp_path, ramp_video):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(tmp_path / "blue.png")
    (tmp_path / "clip.mp4").write_bytes(ramp_video[0].read_bytes())
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return tmp_path


def qa(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def count(ids, tokenizer, token):
    return int((ids == tokenizer.convert_tokens_to_ids(token)).sum())


def test_image_video_and_text_samples(media_dir, tokenizer, image_processor):
    path = media_dir / "data.json"
    path.write_text(json.dumps([
        {"id": "img", "image": "red.png", "conversations": qa("<image>\nWhat colour?", "Red.")},
        {"id": "vid", "video": "clip.mp4", "conversations": qa("<video>\nDescribe.", "Getting brighter.")},
        {"id": "txt", "conversations": qa("Hello", "Hi there.")},
        {"id": "two", "image": ["red.png", "blue.png"],
         "conversations": qa("<image> vs <image>: which is red?", "The first.")},
    ]))
    ds = ConversationDataset(path, tokenizer, image_processor, num_video_frames=6)
    assert len(ds) == 4 and ds.num_malformed == 0

    img = ds[0]
    assert img["input_ids"].dtype == torch.long and img["labels"].shape == img["input_ids"].shape
    assert len(img["media"]) == 1 and img["media"][0].shape == (1, 3, 64, 64)
    assert img["media"][0].dtype == torch.float32
    assert torch.allclose(img["media"][0][0, :, 5, 5], torch.tensor([1.0, -1.0, -1.0]))  # SigLIP-normalised red
    assert "position_ids" not in img

    vid = ds[1]
    assert count(vid["input_ids"], tokenizer, "<video>") == 1
    frames = vid["media"][0]
    assert frames.shape == (6, 3, 64, 64)
    means = frames.mean(dim=(1, 2, 3))
    assert torch.all(means[1:] > means[:-1])  # the ramp: frames come out in temporal order

    assert ds[2]["media"] == []
    two = ds[3]
    reds = [m[0, 0].mean().item() for m in two["media"]]
    assert len(reds) == 2 and reds[0] > 0.9 and reds[1] < -0.9  # media follow placeholder order


def test_placeholder_is_prepended_when_text_has_none(media_dir, tokenizer, image_processor):
    path = write_jsonl(media_dir / "d.jsonl", [
        {"id": 0, "image": "red.png", "video": "clip.mp4", "conversations": qa("What is this?", "A red image.")},
    ])
    ds = ConversationDataset(path, tokenizer, image_processor, num_video_frames=2)
    first_human = ds.records[0]["conversations"][0]["value"]
    assert first_human == "<image>\n<video>\nWhat is this?"
    s = ds[0]
    assert [m.shape[0] for m in s["media"]] == [1, 2]
    assert count(s["input_ids"], tokenizer, "<image>") == 1 and count(s["input_ids"], tokenizer, "<video>") == 1
    media_ids = torch.tensor([tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<video>")])
    placeholders = torch.isin(s["input_ids"], media_ids)
    assert torch.all(s["labels"][placeholders] == IGNORE_INDEX)


def test_malformed_records_are_skipped_counted_and_warned(media_dir, tokenizer, image_processor, caplog):
    good = {"id": "ok", "conversations": qa("Hi", "Hello.")}
    path = write_jsonl(media_dir / "d.jsonl", [good], extra_lines=[
        '{"id": "broken", "conversations": [',        # malformed JSON
        json.dumps({"id": "noconv", "image": "red.png"}),  # missing conversations
        json.dumps({"id": "role", "conversations": [{"from": "robot", "value": "x"}]}),
        json.dumps({"id": "count", "image": ["red.png", "blue.png"], "conversations": qa("<image> only one", "x")}),
        json.dumps([1, 2, 3]),
        "",  # blank lines are not records
    ])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = ConversationDataset(path, tokenizer, image_processor)
    assert len(ds) == 1 and ds.num_malformed == 5
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 5
    assert any("line 2" in r.getMessage() for r in warnings)


@pytest.mark.parametrize("lazy", [False, True])
def test_bad_media_returns_none_and_warns_once(media_dir, tokenizer, image_processor, caplog, lazy):
    """Eager or lazy (opened, not decoded), a file that cannot be opened skips its sample when it is read."""
    path = write_jsonl(media_dir / "d.jsonl", [
        {"id": "missing", "video": "nope.mp4", "conversations": qa("<video>\nHi", "x")},
        {"id": "corrupt", "video": "corrupt.mp4", "conversations": qa("<video>\nHi", "x")},
        {"id": "badimg", "image": "corrupt.mp4", "conversations": qa("<image>\nHi", "x")},
        {"id": "good", "video": "clip.mp4", "conversations": qa("<video>\nHi", "x")},
    ])
    ds = ConversationDataset(path, tokenizer, image_processor, num_video_frames=2, lazy_media=lazy)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            assert ds[0] is None and ds[1] is None and ds[2] is None
        assert ds[3] is not None
    if lazy:
        from longvila.data.video import VideoClip

        clip = ds[3]["media"][0]
        assert isinstance(clip, VideoClip) and clip.num_frames == 2 and clip.path.endswith("clip.mp4")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3  # once per bad index, not once per access
    assert "missing" in msgs[0] and "nope.mp4" in msgs[0]
    assert "corrupt" in msgs[1]


def test_media_root_override(media_dir, tokenizer, image_processor, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    path = write_jsonl(other / "d.jsonl", [{"id": 0, "image": "red.png", "conversations": qa("<image>", "Red.")}])
    assert ConversationDataset(path, tokenizer, image_processor)[0] is None  # relative to the file's folder
    assert ConversationDataset(path, tokenizer, image_processor, media_root=media_dir)[0] is not None


@pytest.mark.parametrize("content", ["", "\n\n", '{"bad json\n{"also": "bad"\n', '{"id": 1}\n', "[]"])
def test_empty_or_all_bad_file_raises_one_clear_error(tmp_path, tokenizer, image_processor, content):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"d\.jsonl") as info:
        ConversationDataset(path, tokenizer, image_processor)
    assert "\n" not in str(info.value)


def test_missing_file_raises(tmp_path, tokenizer, image_processor):
    with pytest.raises(ValueError, match="not found"):
        ConversationDataset(tmp_path / "none.json", tokenizer, image_processor)


def test_overlong_samples_are_truncated_with_warning(media_dir, tokenizer, image_processor, caplog):
    long_q = "The grass is green. " * 30
    path = write_jsonl(media_dir / "d.jsonl", [
        {"id": "trunc", "image": ["red.png", "blue.png"],
         "conversations": qa("<image>\nHello", "A red one. " + long_q + "<image>")},
        {"id": "nolabels", "conversations": qa(long_q, "Yes.")},
    ])
    ds = ConversationDataset(path, tokenizer, image_processor, model_max_length=60)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        s = ds[0]
        assert ds[1] is None  # nothing supervised would remain
    assert s["input_ids"].shape == (60,) and s["labels"].shape == (60,)
    assert (s["labels"] != IGNORE_INDEX).any()
    assert len(s["media"]) == count(s["input_ids"], tokenizer, "<image>") == 1  # the cut-off image is dropped
    assert len(caplog.records) == 2
    full = ConversationDataset(path, tokenizer, image_processor)[0]
    assert torch.equal(full["input_ids"][:60], s["input_ids"])


def test_length_budget_counts_expanded_media(media_dir, tokenizer, image_processor, caplog):
    """With tokens_per_frame the limit applies to the sequence the LLM sees: an <image> costs T positions and a
    <video> num_video_frames x (T + 1). A video that does not fit is dropped with everything after it."""
    answer = "It gets brighter. " * 3
    path = write_jsonl(media_dir / "d.jsonl", [
        {"id": "vid", "video": "clip.mp4", "conversations": qa("Look: <video>", answer)},
        {"id": "img-then-vid", "image": "red.png", "video": "clip.mp4",
         "conversations": qa("<image> is red.", "Yes.") + qa("And <video>?", answer)},
    ])
    text_only = ConversationDataset(path, tokenizer, image_processor, num_video_frames=6)
    n_text = [len(text_only[i]["input_ids"]) for i in range(2)]
    t = 4  # the tiny model's tokens per frame
    video_cost, image_cost = 6 * (t + 1), t
    expanded = [n_text[0] - 1 + video_cost, n_text[1] - 2 + video_cost + image_cost]

    fits = ConversationDataset(path, tokenizer, image_processor, num_video_frames=6, tokens_per_frame=t,
                               model_max_length=expanded[0])
    assert torch.equal(fits[0]["input_ids"], text_only[0]["input_ids"]) and len(fits[0]["media"]) == 1

    tight = ConversationDataset(path, tokenizer, image_processor, num_video_frames=6, tokens_per_frame=t,
                                model_max_length=expanded[0] - 1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cut = tight[0]
    assert cut is not None and len(cut["input_ids"]) == n_text[0] - 1 and len(cut["media"]) == 1
    assert "sequence positions" in caplog.text

    # the second sample's video no longer fits: it and the second turn go, the first (image) turn stays
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    at = text_only[1]["input_ids"].tolist().index(video_id)
    cost_before_video = at - 1 + image_cost
    before_video = ConversationDataset(path, tokenizer, image_processor, num_video_frames=6, tokens_per_frame=t,
                                       model_max_length=cost_before_video + video_cost - 1)[1]
    assert before_video["input_ids"].tolist() == text_only[1]["input_ids"][:at].tolist()
    assert len(before_video["media"]) == 1 and before_video["media"][0].shape[0] == 1  # the image only
    assert (before_video["labels"] != IGNORE_INDEX).any()  # the first answer survives
    # the video does not fit at all and nothing is supervised before it: skipped
    assert ConversationDataset(path, tokenizer, image_processor, num_video_frames=6, tokens_per_frame=t,
                               model_max_length=video_cost - 1)[0] is None


@pytest.mark.parametrize("kwargs", [{"num_video_frames": 0}, {"fps": -1.0}, {"model_max_length": 0},
                                    {"tokens_per_frame": 0}])
def test_bad_arguments(media_dir, tokenizer, image_processor, kwargs):
    path = write_jsonl(media_dir / "d.jsonl", [{"id": 0, "conversations": qa("a", "b")}])
    with pytest.raises(ValueError):
        ConversationDataset(path, tokenizer, image_processor, **kwargs)
