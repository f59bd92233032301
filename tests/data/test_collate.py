import pytest
import torch

from longvila.constants import IGNORE_INDEX
from longvila.data.collate import collate

PAD = 99


def sample(n, start=1, media=(), pos=None):
    ids = torch.arange(start, start + n)
    s = {"input_ids": ids, "labels": ids.clone(), "media": list(media)}
    if pos is not None:
        s["position_ids"] = torch.tensor(pos)
    return s


def test_pads_and_masks():
    img = torch.zeros(1, 3, 4, 4)
    batch = collate([sample(3, media=[img]), None, sample(5, start=10)], pad_token_id=PAD)
    assert batch["num_skipped"] == 1
    assert batch["input_ids"].tolist() == [[1, 2, 3, PAD, PAD], [10, 11, 12, 13, 14]]
    assert batch["labels"].tolist() == [[1, 2, 3, IGNORE_INDEX, IGNORE_INDEX], [10, 11, 12, 13, 14]]
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert len(batch["media"]) == 2 and batch["media"][0][0] is img and batch["media"][1] == []
    assert "position_ids" not in batch


def test_position_ids_padding_is_its_own_document():
    batch = collate([sample(4, pos=[0, 1, 0, 1]), sample(7, pos=[0, 1, 2, 3, 4, 0, 1]), sample(2)], PAD)
    assert batch["position_ids"].tolist() == [
        [0, 1, 0, 1, 0, 1, 2],
        [0, 1, 2, 3, 4, 0, 1],
        [0, 1, 0, 1, 2, 3, 4],  # sample without positions gets 0..n-1, padding restarts at 0
    ]


def test_all_none_gives_empty_batch():
    batch = collate([None, None], PAD)
    assert batch["num_skipped"] == 2 and batch["media"] == []
    assert batch["input_ids"].shape == (0, 0) and batch["labels"].shape == (0, 0)
    assert batch["attention_mask"].shape == (0, 0)


def test_mismatched_sample_raises():
    bad = sample(3)
    bad["labels"] = bad["labels"][:2]
    with pytest.raises(ValueError, match="sample 0"):
        collate([bad], PAD)
    with pytest.raises(ValueError):
        collate([sample(3)], None)
