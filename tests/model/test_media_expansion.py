"""Media expansion on its own: placeholders become frames (+ newline for video), positions continue per document."""

from types import SimpleNamespace

import pytest
import torch

from longvila.constants import IGNORE_INDEX
from longvila.model.media_expansion import check_media, layout_row, renumber_documents, right_pad

IMAGE, VIDEO, NEWLINE = 3, 4, 5


def test_layout_row_replaces_each_placeholder_and_continues_positions():
    tokens = torch.tensor([7, IMAGE, 8, VIDEO, 9])
    labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 8, IGNORE_INDEX, 9])
    ids = SimpleNamespace(image=IMAGE, video=VIDEO, newline=NEWLINE)
    # the image is batch frame 5 (2 tokens: feature rows 10, 11); the video frames 6 and 7, each followed by "\n"
    token_ids, rows, lab, pos = layout_row(tokens, labels, torch.tensor([0, 1, 2, 0, 1]), [1, 2], 5, 2, ids)
    assert token_ids.tolist() == [7, 0, 0, 8, 0, 0, NEWLINE, 0, 0, NEWLINE, 9]
    assert rows.tolist() == [-1, 10, 11, -1, 12, 13, -1, 14, 15, -1, -1]
    assert lab.tolist() == [IGNORE_INDEX] * 3 + [8] + [IGNORE_INDEX] * 6 + [9]
    assert pos.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6]  # second document starts at the video placeholder
    with pytest.raises(ValueError, match="2 media placeholders but 1 media entries"):
        layout_row(tokens, labels, None, [1], 0, 2, ids)


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
