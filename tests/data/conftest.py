"""Fixtures for data tests: a throwaway sentencepiece tokenizer and a small SigLIP image processor.

The tokenizer is trained here (not taken from longvila.model) so data tests do not depend on the model package.
It is loaded through ``LlamaTokenizer.from_pretrained(dir)``, the path that converts a sentencepiece model
correctly in transformers 5.
"""

from __future__ import annotations

import numpy as np
import pytest

SPECIAL = ["<image>", "<video>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "\n"]

CORPUS = [
    "You are a helpful assistant", "system user assistant", "Describe the image.", "A red circle.",
    "A green square.", "A blue triangle.", "A yellow star.", "What colour is the shape?", "What is in the image?",
    "What colour is the shape that appears in the video?", "The pass key is 48213. Remember it.",
    "What is the pass key? The pass key is 48213.", "The grass is green. The sky is blue. The sun is yellow.",
    "Here we go. There and back again. The river flows to the sea.", "Hello world, how are you today?",
]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    d = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(d / "tokenizer"), vocab_size=400, model_type="bpe",
        user_defined_symbols=SPECIAL, remove_extra_whitespaces=False, hard_vocab_limit=False, byte_fallback=True,
        character_coverage=1.0, minloglevel=2,
    )
    tok = LlamaTokenizer.from_pretrained(str(d))
    for s in SPECIAL:  # the fixture itself must be right, or every test below is meaningless
        assert len(tok.encode(s, add_special_tokens=False)) == 1, s
    return tok


@pytest.fixture(scope="session")
def image_processor():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": 64, "width": 64})


@pytest.fixture(scope="session")
def ramp_video(tmp_path_factory):
    """A 24-frame 64x64 H.264 mp4 at 8 fps where frame i is uniform grey level 10*i (so 3 s long).

    Returns (path, levels): decoding any frame and taking its mean identifies which frame it was.
    """
    from longvila.data.synthetic import write_video

    levels = np.arange(24) * 10
    frames = np.broadcast_to(levels[:, None, None, None], (24, 64, 64, 3)).astype(np.uint8)
    path = tmp_path_factory.mktemp("video") / "ramp.mp4"
    write_video(path, frames, fps=8, crf=0)
    return path, levels
