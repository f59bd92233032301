"""How a sample is scored: teacher-forced argmax (default) or greedy generation.

``--scoring teacher_forced`` (the PPL-based protocol of LongVA's V-NIAH)
    ONE teacher-forced forward over prompt + answer. The argmax of the logits that predict the answer tokens is
    decoded and compared with the answer after dropping all whitespace and lower-casing (:func:`is_correct`).
    The forward is the model's own training forward (``build_layout`` -> global label shift ->
    ``sequence_sharder`` -> ``embed_positions`` -> backbone); only ``model.loss_fn`` is swapped for :class:`ArgmaxAtTargets`, which
    takes the argmax at the supervised positions instead of a loss. Under sequence parallelism every rank holds
    its zigzag shard, so the per-position argmax (and NLL) are gathered with
    :func:`longvila.distributed.sharding.gather_sequence` back into global order.

``--scoring generate``
    Greedy decoding of up to ``--max_new_tokens`` tokens after the prompt (:func:`greedy_generate`). Without
    SP it runs the prompt once and decodes with a KV cache (:mod:`longvila.eval.decode`); under SP it runs one
    full sharded forward per token through the same path as teacher forcing. It stops at the tokenizer's EOS or
    ``<|im_end|>``. The sample is correct when the normalised answer occurs in the normalised generation ("The
    shape is red." answers "Red."), the usual rule for free-form V-NIAH answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from longvila.constants import IGNORE_INDEX
from longvila.model.loss import lm_head_logits

if TYPE_CHECKING:  # annotations only: the runtime module imports this one
    from longvila.eval.runtime import EvalRuntime

def normalize_answer(text: str) -> str:
    """Case-insensitive, whitespace-free form used to compare a prediction with the answer."""
    return "".join(text.split()).lower()


def is_correct(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


class ArgmaxAtTargets:
    """Stand-in for ``model.loss_fn``: argmax and NLL at the supervised (shifted-label) positions.

    Called as ``loss_fn(hidden, lm_head_weight, shifted_labels)`` on this rank's shard. Keeps ``pred`` (argmax id,
    -1 elsewhere), ``nll`` (token NLL, 0 elsewhere) and ``labels``, all (B, S_local), and returns the (sum, count)
    the model expects. Only the answer-predicting rows go through the LM head, so no (S, V) logits are built.
    """

    def __init__(self):
        self.pred = self.nll = self.labels = None

    def __call__(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor):
        keep = labels != IGNORE_INDEX
        logits = lm_head_logits(hidden[keep], weight)
        self.pred = torch.full_like(labels, -1)
        self.nll = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
        if logits.shape[0]:
            self.pred[keep] = logits.argmax(-1)
            self.nll[keep] = F.cross_entropy(logits, labels[keep], reduction="none")
        self.labels = labels
        return self.nll.sum(), keep.sum().to(torch.int64)


@contextmanager
def swapped(obj, **attributes) -> Iterator[None]:
    """Temporarily set attributes (model hooks such as ``loss_fn`` or ``frame_encoder``)."""
    saved = {name: getattr(obj, name) for name in attributes}
    for name, value in attributes.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


@dataclass
class TeacherForced:
    """One row's result: argmax ids and targets at the answer positions, and the answer's summed NLL."""

    predicted_ids: list[int]
    target_ids: list[int]
    nll: float


def teacher_forced(model, input_ids: torch.Tensor, labels: torch.Tensor, media=None,
                   layout=None) -> list[TeacherForced]:
    """One forward of ``model`` over (B, L) ``input_ids``; ``labels`` (unshifted) mark the answer tokens.

    Runs the model's own forward (media expansion, global shift, SP sharding, backbone) with ``loss_fn``
    swapped for :class:`ArgmaxAtTargets`; under SP the argmax/NLL/labels are gathered into global order.
    """
    capture = ArgmaxAtTargets()
    device = next(model.parameters()).device
    with torch.no_grad(), swapped(model, loss_fn=capture):
        model(input_ids=input_ids.to(device), labels=labels.to(device),
              attention_mask=torch.ones_like(input_ids, dtype=torch.bool, device=device), media=media)
    pred, nll, targets = capture.pred, capture.nll, capture.labels
    if layout is not None and layout.sp.enabled:
        from longvila.distributed.sharding import gather_sequence

        pred, nll, targets = (gather_sequence(t, layout.sp, layout.groups) for t in (pred, nll, targets))
    out = []
    for b in range(pred.shape[0]):
        keep = targets[b] != IGNORE_INDEX
        out.append(TeacherForced(pred[b][keep].tolist(), targets[b][keep].tolist(), float(nll[b][keep].sum())))
    return out


def score(tokenizer, result: TeacherForced, answer: str) -> dict:
    """Decode the argmax at the answer positions and compare it with ``answer`` (see :func:`is_correct`)."""
    prediction = tokenizer.decode(result.predicted_ids, skip_special_tokens=False)
    return {
        "answer": answer,
        "prediction": prediction,
        "correct": is_correct(prediction, answer),
        "answer_tokens": len(result.target_ids),
        "answer_nll": round(result.nll, 6),
    }


SCORING_RULES = {  # --scoring value -> the rule recorded in the results JSON
    "teacher_forced": "one teacher-forced forward; argmax at the answer positions == answer, case/space-insensitive",
    "generate": "greedy generation (stops at EOS/<|im_end|>); answer occurs in it, case/space-insensitive",
}
SCORING_MODES = tuple(SCORING_RULES)


def uses_kv_cache(layout=None, kv_cache: bool | None = None) -> bool:
    """Whether generation decodes with a KV cache: by default whenever the sequence is not sharded (SP off)."""
    sharded = layout is not None and layout.sp.enabled
    if kv_cache and sharded:
        raise ValueError("KV-cache decoding runs unsharded; under sequence parallelism use kv_cache=False")
    return not sharded if kv_cache is None else kv_cache


def greedy_generate(model, prompt_ids: torch.Tensor, stop_ids: set[int], max_new_tokens: int, media=None,
                    layout=None, kv_cache: bool | None = None) -> list[int]:
    """Greedy continuation of the 1-D ``prompt_ids``, without the stop token.

    Unsharded (the default where SP is off): one prefill and one cached step per token
    (:func:`longvila.eval.decode.cached_greedy_generate`). Under SP, or with ``kv_cache=False``, each step appends
    a placeholder token whose (dummy) label marks the one position to predict, and reads the argmax there through
    :func:`teacher_forced`: the model's own forward, so media caching and SP sharding apply. Causal attention means
    the placeholder itself never influences the prediction.
    """
    if uses_kv_cache(layout, kv_cache):
        from longvila.eval.decode import cached_greedy_generate

        return cached_greedy_generate(model, prompt_ids, stop_ids, max_new_tokens, media=media)
    generated: list[int] = []
    prompt = prompt_ids.tolist()
    for _ in range(max_new_tokens):
        ids = torch.tensor([prompt + generated + [0]])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, -1] = 0
        (step,) = teacher_forced(model, ids, labels, media=media, layout=layout)
        token = step.predicted_ids[0]
        if token in stop_ids:
            break
        generated.append(token)
    return generated


def stop_token_ids(tokenizer) -> set[int]:
    """Tokens that end a generated answer: EOS and the chat template's end of turn."""
    from longvila.data.template import chat_format

    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(chat_format(tokenizer).end)}
    return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


def score_sample(runtime: "EvalRuntime", ids: torch.Tensor, labels: torch.Tensor, answer: str, scoring: str,
                 max_new_tokens: int, media=None, kv_cache: bool | None = None) -> dict:
    """Score one sample: ``ids``/``labels`` hold prompt + answer with labels on the answer only.

    ``teacher_forced``: one forward, the argmax at the answer positions must spell the answer (:func:`score`).
    ``generate``: greedy decoding from the prompt; the answer must occur in the generation.
    """
    if scoring == "teacher_forced":
        result = teacher_forced(runtime.model, ids[None], labels[None], media=media, layout=runtime.layout)[0]
        return score(runtime.tokenizer, result, answer)
    prompt_len = int((labels != IGNORE_INDEX).nonzero()[0])  # the answer follows the prompt
    generated = greedy_generate(runtime.model, ids[:prompt_len], stop_token_ids(runtime.tokenizer),
                                max_new_tokens, media=media, layout=runtime.layout, kv_cache=kv_cache)
    prediction = runtime.tokenizer.decode(generated, skip_special_tokens=True)
    return {
        "answer": answer,
        "prediction": prediction,
        "correct": normalize_answer(answer) in normalize_answer(prediction),
        "generated_tokens": len(generated),
    }
