import pytest
import torch
import torch.nn.functional as F

from longvila.constants import IGNORE_INDEX as X
from longvila.model.loss import cross_entropy_sum, shift_labels


def test_shift_labels_global_and_last_ignored():
    labels = torch.tensor([[X, 5, 6, 7], [1, 2, X, 4]])
    assert shift_labels(labels).tolist() == [[5, 6, 7, X], [2, X, 4, X]]


def test_shift_labels_masks_targets_across_documents():
    labels = torch.tensor([[10, 11, 12, 20, 21, 30]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    # token 2's target would be 20 (first token of the next document): masked; same for token 4 -> 30.
    assert shift_labels(labels, pos).tolist() == [[11, 12, X, 21, X, X]]


def test_shift_labels_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        shift_labels(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="position_ids"):
        shift_labels(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_cross_entropy_sum_matches_reference():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=g, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.tensor([[1, X, 3, 4, X], [X, X, 29, 0, 7]])
    loss, count = cross_entropy_sum(hidden, weight, labels)
    ref = F.cross_entropy(
        (hidden.float() @ weight.float().t()).reshape(-1, 30), labels.reshape(-1), ignore_index=X, reduction="sum"
    )
    assert loss.dtype == torch.float32 and count.dtype == torch.int64
    assert int(count) == 6
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert hidden.grad is not None and weight.grad is not None


def test_all_masked_is_zero_not_nan_and_keeps_graph():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    loss, count = cross_entropy_sum(hidden, weight, torch.full((1, 4), X))
    assert loss.item() == 0.0 and int(count) == 0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="disagree"):
        cross_entropy_sum(torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(2, 4, dtype=torch.long))
