"""Tokenizer files that VILA's loader needs beyond what transformers 5 writes.

transformers 5 saves a tokenizer as ``tokenizer.json`` + ``tokenizer_config.json`` + ``chat_template.jinja``.
VILA pins transformers 4.46, which (a) reads the chat template only from ``tokenizer_config.json`` (without it:
"tokenizer.chat_template is not set"), (b) in the LongVILA era loads the *slow* tokenizer (``use_fast=False``),
which needs ``vocab.json`` + ``merges.txt`` (byte-level BPE: Qwen2, Llama-3) or ``tokenizer.model``
(sentencepiece: Llama-2 style), and (c) learns added tokens from ``added_tokens_decoder`` in
``tokenizer_config.json``. This module adds those next to what transformers wrote, derived from the same
``tokenizer.json`` so the two can never disagree.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

SLOW_BPE_FILES = ("vocab.json", "merges.txt")
SENTENCEPIECE_FILE = "tokenizer.model"
_ADDED_TOKEN_FIELDS = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")


def _is_byte_level(spec: dict | None) -> bool:
    if not spec:
        return False
    if spec.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(part) for part in spec.get("pretokenizers", []))


def _write_bpe_files(model: dict, out: Path) -> None:
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def write_vila_tokenizer_files(tokenizer, llm_dir: str | Path, source_dir: str | Path | None = None) -> list[str]:
    """Complete a saved tokenizer folder for VILA; returns the slow-tokenizer files it holds afterwards.

    ``source_dir`` is where the tokenizer was loaded from: a sentencepiece ``tokenizer.model`` cannot be rebuilt
    from ``tokenizer.json``, so it is copied from there when present.
    """
    out = Path(llm_dir)
    spec = json.loads((out / "tokenizer.json").read_text())
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    config["added_tokens_decoder"] = {
        str(tok["id"]): {k: tok[k] for k in _ADDED_TOKEN_FIELDS} for tok in spec.get("added_tokens", [])
    }
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    model = spec.get("model", {})
    if model.get("type") == "BPE" and _is_byte_level(spec.get("pre_tokenizer")):
        _write_bpe_files(model, out)
    source = Path(source_dir) / SENTENCEPIECE_FILE if source_dir else None
    if source is not None and source.is_file() and source.resolve() != (out / SENTENCEPIECE_FILE).resolve():
        shutil.copyfile(source, out / SENTENCEPIECE_FILE)
    present = [name for name in (*SLOW_BPE_FILES, SENTENCEPIECE_FILE) if (out / name).is_file()]
    if not present:
        logger.warning("%s: no slow-tokenizer files (vocab.json + merges.txt or tokenizer.model) could be written; "
                       "VILA's use_fast=False loading will fail on this folder", out)
    return present
