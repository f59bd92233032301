"""Media expansion on its own: placeholders become frames (+ newline for video), positions continue per document."""

import pytest
import torch

from longvila.constants import IGNORE_INDEX
from longvila.model.media_expansion import check_media, expand_row, renumber_documents, right_pad

IMAGE, VIDEO = 3, 4


def test_expand_row_replaces_each_placeholder_and_continues_positions():
    tokens = torch.tensor([7, IMAGE, 8, VIDEO, 9])
    embeds = torch.arange(5.0)[:, None].expand(5, 2).clone()
    labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 8, IGNORE_INDEX, 9])
    image = torch.full((1, 2, 2), 10.0)  # 1 frame x 2 tokens
    video = torch.full((2, 1, 2), 20.0)  # 2 frames x 1 token, each followed by the newline
    newline = torch.full((1, 2), -1.0)
    e, lab, pos = expand_row(tokens, embeds, labels, torch.tensor([0, 1, 2, 0, 1]), iter([image, video]), newline,
                             IMAGE, VIDEO)
    assert e[:, 0].tolist() == [0, 10, 10, 2, 20, -1, 20, -1, 4]
    assert lab.tolist() == [IGNORE_INDEX] * 3 + [8] + [IGNORE_INDEX] * 4 + [9]
    assert pos.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4]  # second document starts at the video placeholder


def test_check_media_rejects_mismatched_media_in_one_line():
    ids = torch.tensor([[7, IMAGE, 8]])
    with pytest.raises(ValueError, match="1 media placeholders but 0 media entries"):
        check_media(ids, ids, None, [[]], None, IMAGE, VIDEO)
    with pytest.raises(ValueError, match="<image> needs T=1 frame"):
        check_media(ids, ids, None, [[torch.zeros(2, 3, 4, 4)]], None, IMAGE, VIDEO)
    mask, media, placeholders = check_media(ids, ids, None, [[torch.zeros(1, 3, 4, 4)]], None,
                                            IMAGE, VIDEO)
    assert mask.dtype == torch.bool and placeholders.tolist() == [[False, True, False]]


def test_renumber_and_right_pad():
    assert renumber_documents(torch.tensor([0, 1, 5, 9, 0, 7])).tolist() == [0, 1, 2, 3, 0, 1]
    values, labels, positions, mask = right_pad([torch.ones(3, 2), torch.ones(1, 2)],
                                                [torch.tensor([1, 2, 3]), torch.tensor([4])],
                                                [torch.arange(3), torch.arange(1)])
    assert values.shape == (2, 3, 2) and mask.tolist() == [[True] * 3, [True, False, False]]
    assert labels[1].tolist() == [4, IGNORE_INDEX, IGNORE_INDEX] and positions[1].tolist() == [0, 0, 1]
