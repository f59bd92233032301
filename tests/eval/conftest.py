"""Fixtures for the evaluation tests: the embedded tiny model (built once per session) and a small needle file."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def tiny_path():
    from longvila.model.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path / "llm")


@pytest.fixture
def needle_file(tmp_path):
    """A user needle JSON with two needles (images relative to the file)."""
    from longvila.eval.vniah import synthetic_needles

    needles = synthetic_needles()[:2]
    items = []
    for k, needle in enumerate(needles):
        needle.image.save(tmp_path / f"n{k}.png")
        items.append({"image": f"n{k}.png", "question": needle.question, "answer": needle.answer,
                      "name": needle.name})
    path = tmp_path / "needles.json"
    path.write_text(json.dumps(items))
    return path
