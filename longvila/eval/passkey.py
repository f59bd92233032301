"""Passkey retrieval: a 5-digit pass key hidden in filler text, over a grid of context lengths x depths.

    longvila passkey --model runs/tiny/s4_context_ext --output_dir runs/passkey
    torchrun --nproc_per_node 2 -m longvila.eval.passkey --model DIR --seq_parallel_size 2 --max_length 65536 ...

The standard check that stage 4 (context extension) worked. A document is the stage-4 training format
(:func:`longvila.data.synthetic.passkey_document`), as plain text without a chat template::

    There is important information hidden in this text. Find it and remember it. <filler sentences, with
    "The pass key is 12345. Remember it." inserted> What is the pass key? The pass key is 12345

Context length L (tokens) takes ``range(min_length, max_length + 1, length_step)``; filler sentences are added
until the whole document reaches L tokens (the JSON records the exact count). The key sentence goes before filler
sentence ``floor(depth * n / 100)`` of the n filler sentences (:func:`longvila.eval.grid.needle_index`). The answer
is the key's digits after "The pass key is"; the grid, scoring, SP runtime, JSON and heatmap are shared with
V-NIAH (:mod:`longvila.eval.grid`, :mod:`longvila.eval.scoring`, :mod:`longvila.eval.runtime`,
:mod:`longvila.eval.report`).
``--num_keys`` keys per cell (different keys and filler, deterministic in ``--seed``, length and depth).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from longvila.config import flag
from longvila.constants import IGNORE_INDEX
from longvila.eval.command import (EvalConfig, base_config, check_common, cli_main, parse_config, publish,
                                   runtime_from_args)
from longvila.eval.grid import GridSpec, insert_needle, run_grid, value_range
from longvila.errors import EvalError
from longvila.eval.runtime import EvalRuntime
from longvila.eval.scoring import score_sample

logger = logging.getLogger("longvila.eval")

INTRO = "There is important information hidden in this text. Find it and remember it."
KEY_SENTENCE = "The pass key is {key}. Remember it."
QUESTION = "What is the pass key? The pass key is"


def passkey_sample(tokenizer, length: int, depth: float, key: int, rng: np.random.Generator):
    """(input_ids, labels, info) of a document of about ``length`` tokens, labels on the key's tokens only."""
    from longvila.data.synthetic import FILLER

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    fixed = len(encode(" ".join([INTRO, KEY_SENTENCE.format(key=key), QUESTION]))) + len(encode(f" {key}"))
    cost = {s: len(encode(" " + s)) for s in FILLER}
    filler, used = [], fixed
    while True:
        sentence = FILLER[rng.integers(len(FILLER))]
        if used + cost[sentence] > length:
            break
        filler.append(sentence)
        used += cost[sentence]
    body, index = insert_needle(filler, KEY_SENTENCE.format(key=key), depth)
    prompt_text = " ".join([INTRO, *body, QUESTION])
    prompt, full = encode(prompt_text), encode(f"{prompt_text} {key}")
    if full[:len(prompt)] != prompt:  # a tokenizer that merges across the boundary: encode the parts apart
        full = prompt + encode(f" {key}")
    answer_ids = full[len(prompt):]
    ids = torch.tensor(full)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt) + answer_ids)
    return ids, labels, {"filler_sentences": len(filler), "key_sentence": index}


@dataclass(kw_only=True)
class PasskeyConfig(EvalConfig):
    """Passkey retrieval: the context-length axis of the grid and how many keys per cell."""

    min_length: int = flag(256, "Shortest context (tokens).")
    max_length: int = flag(4096, "Longest context (tokens).")
    length_step: int = 256
    num_keys: int = flag(1, "Pass keys per cell.")


def validate(cfg: PasskeyConfig) -> tuple[list[int], list[float]]:
    depths = check_common(cfg)
    lengths = value_range(cfg.min_length, cfg.max_length, cfg.length_step, "length")
    if cfg.min_length < 64:
        raise EvalError(f"--min_length must be >= 64 tokens (room for the question and the key), got "
                        f"{cfg.min_length}")
    if cfg.num_keys < 1:
        raise EvalError(f"--num_keys must be >= 1, got {cfg.num_keys}")
    return lengths, depths


def run_passkey(cfg: PasskeyConfig, runtime: EvalRuntime | None = None) -> dict:
    """Evaluate the grid, write ``passkey_results.json`` + ``passkey_heatmap.png`` (rank 0), return the results."""
    lengths, depths = validate(cfg)
    if runtime is None:
        runtime = runtime_from_args(cfg)
    tokenizer = runtime.tokenizer
    window = getattr(runtime.model.llm.config, "max_position_embeddings", None)
    if window and cfg.max_length > window:
        logger.warning("--max_length %d exceeds the model's max_position_embeddings %d", cfg.max_length, window)

    def evaluate(length: int, depth: float) -> list[dict]:
        samples = []
        for j in range(cfg.num_keys):
            rng = np.random.default_rng([cfg.seed, length, int(round(depth * 1000)), j])
            key = int(rng.integers(10000, 100000))
            ids, labels, info = passkey_sample(tokenizer, length, depth, key, rng)
            scored = score_sample(runtime, ids, labels, str(key), cfg.scoring, cfg.max_new_tokens)
            samples.append({"key": key, "seq_len": len(ids), **info, **scored})
        return samples

    spec = GridSpec("passkey", "context_tokens", "Context length (tokens)", tuple(lengths), tuple(depths))
    cells = run_grid(spec, evaluate, runtime, cfg.disable_tqdm)
    config = {
        **base_config(cfg, runtime),
        "min_length": cfg.min_length, "max_length": cfg.max_length, "length_step": cfg.length_step,
        "num_keys": cfg.num_keys,
        "max_position_embeddings": window,
        "insertion_rule": "key sentence inserted before filler sentence floor(depth * n / 100)",
    }
    return publish(spec, cells, config, cfg, runtime, "passkey")


def parse_args(argv: Sequence[str]) -> PasskeyConfig:
    return parse_config("longvila passkey", "Passkey retrieval over context length x depth.", PasskeyConfig,
                        validate, argv)


def main(argv: Sequence[str] | None = None) -> None:
    cli_main("longvila passkey", lambda a: run_passkey(parse_args(a)), argv)


if __name__ == "__main__":
    main()
