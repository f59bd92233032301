import json
import os

import numpy as np
import pytest
from PIL import Image

from longvila.data.collate import collate
from longvila.data.datasets import ConversationDataset
from longvila.data.packing import PackedTextDataset
from longvila.data.synthetic import (
    PALETTE,
    SHAPES,
    STAGE_DEFAULTS,
    ensure_synthetic_data,
    make_caption_data,
    make_instruction_data,
    make_long_text_data,
    make_video_data,
)
from longvila.data.template import encode_conversation
from longvila.data.video import load_video


def test_caption_data(tmp_path, tokenizer, image_processor):
    path = make_caption_data(tmp_path, 12, seed=0)
    records = json.loads(path.read_text())
    assert len(records) == 12
    for r in records:
        assert r["shape"] in SHAPES and r["colour"] in PALETTE
        assert r["conversations"][0]["value"].startswith("<image>\n")
        article = "An" if r["colour"] == "orange" else "A"
        assert r["conversations"][1]["value"] == f"{article} {r['colour']} {r['shape']}."
        img = np.asarray(Image.open(tmp_path / r["image"]).convert("RGB")).reshape(-1, 3)
        # the shape's palette colour is really in the picture
        assert (np.abs(img.astype(int) - PALETTE[r["colour"]]).sum(1) == 0).sum() > 20
    assert len({r["conversations"][0]["value"] for r in records}) > 1  # prompt wording varies
    ds = ConversationDataset(path, tokenizer, image_processor)
    batch = collate([ds[i] for i in range(4)], pad_token_id=0)
    assert batch["input_ids"].shape[0] == 4 and all(m[0].shape == (1, 3, 64, 64) for m in batch["media"])


def test_generation_is_deterministic_and_skipped_when_present(tmp_path):
    a = make_caption_data(tmp_path / "a", 5, seed=3)
    b = make_caption_data(tmp_path / "b", 5, seed=3)
    assert a.read_text() == b.read_text()
    for r in json.loads(a.read_text()):
        assert (a.parent / r["image"]).read_bytes() == (b.parent / r["image"]).read_bytes()
    c = make_caption_data(tmp_path / "c", 5, seed=4)
    assert c.read_text() != a.read_text().replace("caption-3-", "caption-4-")
    # sample i does not depend on n: a bigger set extends a smaller one
    more = json.loads(make_caption_data(tmp_path / "a", 8, seed=3).read_text())
    assert more[:5] == json.loads(a.read_text())
    # an existing dataset file is returned untouched
    a.write_text(a.read_text())  # same content, fresh mtime; a regeneration would rewrite it again
    stamp = os.stat(a).st_mtime_ns
    assert make_caption_data(tmp_path / "a", 5, seed=3) == a and os.stat(a).st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "a").rglob("*") if ".tmp" in p.name]


def test_instruction_data(tmp_path, tokenizer):
    path = make_instruction_data(tmp_path, 30, seed=0)
    records = json.loads(path.read_text())
    turns = [len(r["conversations"]) // 2 for r in records]
    assert min(turns) == 1 and max(turns) >= 2
    asked = set()
    for r in records:
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n") and sum(t["value"].count("<image>") for t in conv) == 1
        expected = {
            "What colour is the shape?": f"{r['colour'].capitalize()}.",
            "What shape is shown in the image?": f"A {r['shape']}.",
            "What is in the image?": f"{'An' if r['colour'] == 'orange' else 'A'} {r['colour']} {r['shape']} on a "
                                     f"{r['background']} background.",
            "What colour is the background?": f"{r['background'].capitalize()}.",
        }
        questions = [t["value"].removeprefix("<image>\n") for t in conv[0::2]]
        assert len(set(questions)) == len(questions)  # no repeated question within a conversation
        for q, a in zip(questions, [t["value"] for t in conv[1::2]]):
            asked.add(q)
            if q in expected:
                assert a == expected[q]
            else:
                assert q == "Where is the shape?" and a.startswith("In the ") and a.endswith(" of the image.")
        encode_conversation(tokenizer, conv)  # valid roles / structure
    assert len(asked) == 5


def test_long_text_data(tmp_path, tokenizer):
    path = make_long_text_data(tmp_path, 6, doc_tokens_approx=200, seed=0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 6
    depths = []
    for r in records:
        key = r["passkey"]
        assert 10000 <= key < 100000
        assert f"The pass key is {key}. Remember it." in r["text"]
        assert r["text"].endswith(f"What is the pass key? The pass key is {key}.")
        assert 500 < len(r["text"]) < 1100  # ~4 characters per approximate token
        depths.append(r["text"].index("Remember it.") / len(r["text"]))
    assert max(depths) - min(depths) > 0.2  # the key sits at varying depths
    ds = PackedTextDataset(path, tokenizer, model_max_length=2048)
    assert ds.num_documents == 6


def test_video_data_has_exactly_one_needle_frame(tmp_path, tokenizer, image_processor):
    path = make_video_data(tmp_path, 4, num_frames=8, size=32, seed=0)
    records = json.loads(path.read_text())
    for r in records:
        frames = load_video(tmp_path / r["video"], 8).astype(int)
        assert frames.shape == (8, 32, 32, 3)
        spread = np.abs(frames - r["grey"]).reshape(8, -1).max(1)
        assert spread.argmax() == r["needle_frame"]
        others = np.delete(spread, r["needle_frame"])
        assert others.max() <= 3 and spread[r["needle_frame"]] > 40  # grey, noise-free; needle clearly visible
        assert r["conversations"][0]["value"] == "<video>\nWhat colour is the shape that appears in the video?"
        assert r["conversations"][1]["value"] == f"{r['needle_colour'].capitalize()}."
        # the needle's dominant colour is the palette colour named in the answer
        needle = frames[r["needle_frame"]].reshape(-1, 3)
        coloured = needle[np.abs(needle - r["grey"]).max(1) > 40]
        dist = {c: np.abs(coloured.mean(0) - np.array(rgb)).sum() for c, rgb in PALETTE.items()}
        assert min(dist, key=dist.get) == r["needle_colour"]
    assert len({r["needle_frame"] for r in records}) > 1
    ds = ConversationDataset(path, tokenizer, image_processor, num_video_frames=8)
    assert ds[0]["media"][0].shape == (8, 3, 64, 64)


def test_ensure_synthetic_data_dispatch(tmp_path, tokenizer, image_processor):
    assert set(STAGE_DEFAULTS) == {"s1_align", "s2_pretrain", "s3_sft", "s4_context_ext", "s5_long_video_sft"}
    p1 = ensure_synthetic_data("s1_align", tmp_path, n=3)
    p2 = ensure_synthetic_data("s2_pretrain", tmp_path, n=3)
    assert p1.parent == tmp_path / "s1_align" and p1.exists() and p1.read_text() != p2.read_text()
    p4 = ensure_synthetic_data("s4_context_ext", tmp_path, n_docs=2, doc_tokens_approx=50)
    assert p4.suffix == ".jsonl" and p4.parent.name == "s4_context_ext"
    p5 = ensure_synthetic_data("s5_long_video_sft", tmp_path, n=1, num_frames=4)
    assert len(ConversationDataset(p5, tokenizer, image_processor, num_video_frames=4)) == 1
    assert ensure_synthetic_data("s3_sft", tmp_path, n=2).exists()
    with pytest.raises(ValueError, match="s1_align"):
        ensure_synthetic_data("s9_nope", tmp_path)
    with pytest.raises(ValueError):
        make_caption_data(tmp_path, 0)
    with pytest.raises(ValueError):
        make_video_data(tmp_path, 1, 4, size=33)
