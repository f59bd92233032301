"""Passkey retrieval: document construction (length, key position, answer tokens) and outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longvila.constants import IGNORE_INDEX
from longvila.eval.grid import needle_index
from longvila.eval.passkey import PasskeyConfig, passkey_sample, run_passkey


@pytest.mark.parametrize("length, depth", [(128, 0), (256, 40), (512, 100)])
def test_passkey_document(tokenizer, length, depth):
    ids, labels, info = passkey_sample(tokenizer, length, depth, 48213, np.random.default_rng(0))
    assert length - 12 <= len(ids) <= length  # filled up to the requested length
    assert info["key_sentence"] == needle_index(depth, info["filler_sentences"])
    answer = labels[labels != IGNORE_INDEX].tolist()
    assert ids[-len(answer):].tolist() == answer and tokenizer.decode(answer).strip() == "48213"
    text = tokenizer.decode(ids.tolist())
    assert text.endswith("What is the pass key? The pass key is 48213")
    sentences = text.split("Find it and remember it. ", 1)[1].split(". ")
    assert sentences[info["key_sentence"]] == "The pass key is 48213"


def test_passkey_run_writes_json_and_heatmap(tmp_path):
    results = run_passkey(PasskeyConfig(output_dir=tmp_path, min_length=96, max_length=224, length_step=64,
                                        depth_step=50, num_keys=2, disable_tqdm=True))
    saved = json.loads((tmp_path / "passkey_results.json").read_text())
    assert saved["axes"]["x"] == [96, 160, 224] and saved["num_samples"] == 18
    assert saved["mean_accuracy"] == results["mean_accuracy"]
    keys = {s["key"] for c in saved["cells"] for s in c["samples"]}
    assert len(keys) > 9 and all(10000 <= k < 100000 for k in keys)
    assert (tmp_path / "passkey_heatmap.png").read_bytes()[:4] == b"\x89PNG"
