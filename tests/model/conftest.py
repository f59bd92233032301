"""Shared fixtures for the model tests: one tiny checkpoint per session, fresh model copies per test."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# The suite-wide conftest points LONGVILA_HOME at a temp dir; keep that guarantee when this folder runs alone.
os.environ.setdefault("LONGVILA_HOME", tempfile.mkdtemp(prefix="longvila-model-test-home-"))

from longvila.constants import IGNORE_INDEX  # noqa: E402


@pytest.fixture(scope="session")
def tiny_path():
    from longvila.model.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture
def tiny(tiny_path):
    """(model, tokenizer, image_processor) loaded fresh from the cached tiny checkpoint (cheap: ~50 ms)."""
    from longvila.model.checkpoint import load_vila

    model, tok, ip = load_vila(tiny_path)
    model.eval()
    return model, tok, ip


def encode_sample(tok, prompt: str, answer: str):
    """Qwen2-formatted ids with labels on the answer + <|im_end|> only (placeholders are never supervised)."""
    head = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    head_ids = tok.encode(head, add_special_tokens=False)
    ans_ids = tok.encode(f"{answer}<|im_end|>", add_special_tokens=False)
    tail_ids = tok.encode("\n", add_special_tokens=False)
    ids = torch.tensor(head_ids + ans_ids + tail_ids)
    labels = torch.tensor([IGNORE_INDEX] * len(head_ids) + ans_ids + [IGNORE_INDEX] * len(tail_ids))
    return ids, labels


def collate(samples, pad_id: int):
    """Right-pad (ids, labels) pairs into a contract batch."""
    length = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), length), pad_id)
    labels = torch.full((len(samples), length), IGNORE_INDEX)
    mask = torch.zeros(len(samples), length, dtype=torch.bool)
    for b, (ids, lab) in enumerate(samples):
        input_ids[b, : len(ids)] = ids
        labels[b, : len(ids)] = lab
        mask[b, : len(ids)] = True
    return input_ids, labels, mask


@pytest.fixture
def media_batch(tiny):
    """Batch of two samples: one image (T=1) and one 3-frame video, plus their media lists."""
    _, tok, _ = tiny
    gen = torch.Generator().manual_seed(0)
    s0 = encode_sample(tok, "<image>\nWhat colour is the star?", "red")
    s1 = encode_sample(tok, "<video>\nWhich frame shows the blue circle? Answer briefly please.", "frame two")
    input_ids, labels, mask = collate([s0, s1], tok.pad_token_id)
    media = [[torch.randn(1, 3, 64, 64, generator=gen)], [torch.randn(3, 3, 64, 64, generator=gen)]]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "media": media}
