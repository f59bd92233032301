"""The shared grid: exact needle placement, answer normalisation, and teacher-forced scoring on forced logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longvila.constants import IGNORE_INDEX
from longvila.eval.grid import depth_values, insert_needle, needle_index, value_range
from longvila.errors import EvalError
from longvila.eval.scoring import greedy_generate, is_correct, normalize_answer, score, score_sample, teacher_forced
from longvila.model.loss import cross_entropy_sum, shift_labels


@pytest.mark.parametrize("depth, n, expected", [
    (0, 10, 0), (100, 10, 10), (50, 10, 5), (50, 9, 4), (10, 30, 3), (70, 10, 7), (29, 100, 29),
    (33.3, 1000, 333), (12.5, 8, 1), (99.9, 10, 9), (100, 0, 0),
])
def test_needle_index_is_floor_of_depth_times_frames(depth, n, expected):
    # 10% of 30 and 70% of 10 are exactly 3 and 7 (float arithmetic gives 2.9999... and 6.9999...)
    assert needle_index(depth, n) == expected


def test_insert_needle_into_lists_and_feature_tensors():
    frames, k = insert_needle(list("abcdefghij"), "N", 30)
    assert k == 3 and frames == list("abcNdefghij")
    assert insert_needle(list("abc"), "N", 0) == (list("Nabc"), 0)
    assert insert_needle(list("abc"), "N", 100) == (list("abcN"), 3)
    features = torch.arange(5.0)[:, None, None].expand(5, 4, 2)  # frame i is all i
    needle = torch.full((1, 4, 2), -1.0)
    out, k = insert_needle(features, needle, 50)
    assert k == 2 and out.shape == (6, 4, 2)
    assert out[:, 0, 0].tolist() == [0, 1, -1, 2, 3, 4]
    with pytest.raises(EvalError):
        needle_index(101, 5)


def test_grid_axes():
    assert depth_values(10) == [float(d) for d in range(0, 101, 10)]
    assert depth_values(30) == [0.0, 30.0, 60.0, 90.0]
    assert depth_values(12.5)[-1] == 100.0 and len(depth_values(12.5)) == 9
    assert value_range(8, 32, 8, "frames") == [8, 16, 24, 32]
    assert value_range(8, 30, 8, "frames") == [8, 16, 24]
    for bad in ((0, 4, 1), (5, 4, 1), (1, 4, 0)):
        with pytest.raises(EvalError, match="frames"):
            value_range(*bad, "frames")
    with pytest.raises(EvalError, match="depth_step"):
        depth_values(0)


def test_answers_compare_case_and_space_insensitively():
    assert normalize_answer(" Re d .\n") == "red."
    assert is_correct("red.", "Red.") and is_correct(" 1 2 3", "123")
    assert not is_correct("Red", "Red.") and not is_correct("Green.", "Red.")


class ForcedLM(torch.nn.Module):
    """A stand-in with VILAModel's forward contract whose argmax is chosen by hand.

    ``mode="oracle"`` puts the logit peak of position t on token t+1 (so teacher forcing reproduces the answer),
    ``mode="echo"`` on token t (always wrong for an answer without repeats). Logits = one-hot hidden @ identity.
    """

    def __init__(self, vocab: int, mode: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(vocab))
        self.mode = mode
        self.loss_fn = cross_entropy_sum

    def forward(self, input_ids, labels, attention_mask=None, media=None, **_):
        shifted = shift_labels(labels)
        peak = torch.roll(input_ids, -1, dims=1) if self.mode == "oracle" else input_ids
        hidden = 30.0 * F.one_hot(peak, self.weight.shape[0]).float()
        return self.loss_fn(hidden, self.weight, shifted)


def test_teacher_forced_scoring_on_forced_argmax(tokenizer):
    prompt = tokenizer.encode("What colour is the shape?", add_special_tokens=False)
    answer = "Purple."
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    assert len(answer_ids) > 1
    ids = torch.tensor([prompt + answer_ids])
    labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + answer_ids])
    model = ForcedLM(len(tokenizer), "oracle")

    (right,) = teacher_forced(model, ids, labels)
    assert right.target_ids == answer_ids and right.predicted_ids == answer_ids
    good = score(tokenizer, right, answer)
    assert good["correct"] and good["prediction"] == "Purple." and good["answer_tokens"] == len(answer_ids)
    assert model.loss_fn is cross_entropy_sum, "the loss hook is restored after scoring"
    # the same argmax judged against another answer, and a case/space variant of the right one
    assert not score(tokenizer, right, "Red.")["correct"]
    assert score(tokenizer, right, "pur ple.")["correct"]

    (wrong,) = teacher_forced(ForcedLM(len(tokenizer), "echo"), ids, labels)
    assert wrong.predicted_ids == [prompt[-1]] + answer_ids[:-1]  # each position repeats its own token
    bad = score(tokenizer, wrong, answer)
    assert not bad["correct"] and bad["answer_nll"] > 5 * len(answer_ids)
    assert good["answer_nll"] < 1e-3


def test_greedy_generation_on_forced_argmax(tokenizer):
    """Full-forward decoding (the SP path; the stand-in has no KV cache). The "echo" stand-in predicts, at every
    position, the token already there: greedy decoding therefore repeats the prompt's last token until the cap, or
    stops at once when that token is a stop token."""
    from types import SimpleNamespace

    prompt = torch.tensor(tokenizer.encode("What colour is the shape? Red", add_special_tokens=False))
    model = ForcedLM(len(tokenizer), "echo")
    last = int(prompt[-1])
    assert greedy_generate(model, prompt, stop_ids=set(), max_new_tokens=4, kv_cache=False) == [last] * 4
    assert greedy_generate(model, prompt, stop_ids={last}, max_new_tokens=4, kv_cache=False) == []
    assert model.loss_fn is cross_entropy_sum

    answer_ids = tokenizer.encode(" Red", add_special_tokens=False)
    ids = torch.tensor(prompt.tolist() + answer_ids)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt) + answer_ids)
    runtime = SimpleNamespace(model=model, tokenizer=tokenizer, layout=None)
    generated = score_sample(runtime, ids, labels, "red", "generate", max_new_tokens=3, kv_cache=False)
    assert generated["generated_tokens"] == 3 and generated["prediction"] == tokenizer.decode([last] * 3)
    assert generated["correct"] == ("red" in generated["prediction"].replace(" ", "").lower())
    wrong = score_sample(runtime, ids, labels, "zebra", "generate", max_new_tokens=3, kv_cache=False)
    assert wrong["correct"] is False
    forced = score_sample(runtime, ids, labels, " Red", "teacher_forced", max_new_tokens=3)
    assert set(forced) >= {"prediction", "correct", "answer_nll"}
