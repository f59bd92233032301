"""MM-SP by routing: mixed image and video batches give the single process's loss and gradients under Ulysses,
zigzag ring and 2D, and no rank ever makes a floating-point tensor as long as the whole sequence.

The "whole sequence" check records the shape of every floating-point tensor the SP forward and backward create
(a ``TorchDispatchMode``) and looks for a vector at least as wide as the LLM's hidden size at every position of the
whole sequence: a dimension equal to the global expanded length (padded or not, flattened over the batch or not)
followed by one >= hidden size. Ulysses' attention legitimately sees the whole sequence for its 1/U of the heads
(head_dim wide, so it is not counted). What the old all-gather path built (the whole embedded
sequence, ``build_sequence``) goes through the same recorder, which must catch it: the check can fail.
"""

import copy
import math

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from longvila.constants import IGNORE_INDEX
from longvila.distributed.attention import AttentionDispatcher
from longvila.distributed.integration import SequenceSharder
from longvila.distributed.media_routing import plan_local, plan_routes, route_features
from longvila.distributed.mesh import SequenceParallelConfig
from longvila.distributed.mmsp import split_frames

from .world import get_mesh


@pytest.fixture(scope="module")
def tiny_path():
    from longvila.model.tiny import tiny_model_path

    return tiny_model_path()


class ShapeRecorder(TorchDispatchMode):
    """Every floating-point tensor shape any op returns while active."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                self.shapes.add(tuple(value.shape))
        return out


def _encode(tok, prompt, answer):
    head = tok.encode(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    tail = tok.encode(f"{answer}<|im_end|>", add_special_tokens=False)
    return torch.tensor(head + tail), torch.tensor([IGNORE_INDEX] * len(head) + tail)


FRAME_COUNTS = ((1, 5), (3, 1), ())
NUM_FRAMES = 10


def mixed_batch(tok, seed: int = 0):
    """Three samples: an image then a 5-frame video; a 3-frame video then an image; text only. 10 frames of 64 px.
    (Three rows, so no rank's flattened (B x S/SP) shard has the whole sequence's length.)"""
    g = torch.Generator().manual_seed(seed)
    samples = [_encode(tok, "<image>\nand <video>\nWhat moves?", "the red star"),
               _encode(tok, "<video>\nthen <image>\nSame?", "no"),
               _encode(tok, "Name a colour that is not blue, please.", "red")]
    length = max(len(ids) for ids, _ in samples)
    ids = torch.full((3, length), tok.pad_token_id)
    labels = torch.full((3, length), IGNORE_INDEX)
    mask = torch.zeros(3, length, dtype=torch.bool)
    for b, (i, lab) in enumerate(samples):
        ids[b, :len(i)], labels[b, :len(i)], mask[b, :len(i)] = i, lab, True
    media = [[torch.randn(n, 3, 64, 64, generator=g, dtype=torch.float64) for n in counts] for counts in FRAME_COUNTS]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "media": media}


def whole_sequence_shapes(shapes, lengths, hidden):
    """Shapes holding a >= ``hidden``-wide vector for every position of a sequence of one of ``lengths``."""
    return sorted(s for s in shapes if any(a in lengths and b >= hidden for a, b in zip(s, s[1:])))


def local_media(batch, split):
    """What the loader hands a rank that decodes only its frames: its frames as one tensor, and the frame counts."""
    every_frame = torch.cat([medium for sample in batch["media"] for medium in sample])
    return {**batch, "media": None, "frames": every_frame[split.start:split.stop].clone(),
            "media_frames": [[m.shape[0] for m in s] for s in batch["media"]]}


def _load(path, chunk):
    from longvila.model.checkpoint import load_vila

    model, tok, _ = load_vila(path)
    model = model.double().train()
    model.vision_chunk_frames = chunk
    return model, tok


def _grads(model):
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _routed_vs_single(rank, world, path, sp, ring, chunk, loader_split, whole_sequence_control):
    torch.manual_seed(0)
    model, tok = _load(path, chunk)
    ref = copy.deepcopy(model)
    batch = mixed_batch(tok)
    out = ref(**batch)
    out.loss_sum.backward()

    cfg = SequenceParallelConfig(sp, ring)
    groups = get_mesh(cfg)
    model.set_attention(AttentionDispatcher(cfg, groups, "torch"))
    model.sequence_sharder = SequenceSharder(cfg, groups, model.tokens_per_frame)
    full_len = model.build_layout(batch["input_ids"], batch["labels"], batch["attention_mask"],
                                  batch["media"]).token_ids.shape[1]
    padded = math.ceil(full_len / cfg.pad_multiple) * cfg.pad_multiple
    rows = batch["input_ids"].shape[0]
    whole = {full_len, padded, rows * full_len, rows * padded}  # flattened (B*S, H) counts too
    assert not whole & {rows * padded // sp}, "a rank's flattened shard must not look whole"
    if loader_split:
        batch = local_media(batch, split_frames(NUM_FRAMES, groups.sp_rank, sp))
    recorder = ShapeRecorder()
    with recorder:
        if whole_sequence_control:  # the old MM-SP's first step: every rank embeds the whole sequence
            model.build_sequence(batch["input_ids"], batch["labels"], batch["attention_mask"], batch["media"])
        got = model(**batch)
        got.loss_sum.backward()
    loss = got.loss_sum.detach().clone()
    dist.all_reduce(loss, group=groups.sp_group)
    torch.testing.assert_close(loss, out.loss_sum.detach(), rtol=1e-6, atol=0)  # the loss sums in fp32
    mine, want = _grads(model), _grads(ref)
    assert mine.keys() == want.keys()
    for name, grad in mine.items():
        dist.all_reduce(grad, group=groups.sp_group)  # what the DP x SP gradient reduction sums
        # fp64 everywhere but the chunked loss's fp32 LM-head gradient accumulator
        atol = 1e-6 * float(want[name].abs().max()) if name.endswith("lm_head.weight") else 1e-12
        torch.testing.assert_close(grad, want[name], rtol=1e-9, atol=atol, msg=lambda m: f"{name}: {m}")
    return whole_sequence_shapes(recorder.shapes, whole, model.llm.config.hidden_size)


@pytest.mark.parametrize("sp, ring", [(2, 1), (2, 2), (4, 2), (4, 1)])
@pytest.mark.parametrize("chunk", [0, 2])
def test_routed_mmsp_matches_single_process_without_full_length_tensors(world4, tiny_path, sp, ring, chunk):
    for loader_split in (False, True):
        full = world4.run(_routed_vs_single, str(tiny_path), sp, ring, chunk, loader_split, False)
        assert full == [[]] * 4, full


def test_shape_recorder_catches_a_whole_sequence(world4, tiny_path):
    full = world4.run(_routed_vs_single, str(tiny_path), 2, 1, 0, False, True)
    assert all(shapes for shapes in full)


@pytest.mark.parametrize("sp, ring", [(2, 1), (2, 2), (4, 2), (4, 4)])
def test_route_plan_delivers_every_row_once(sp, ring):
    """Without any process: each rank's plan sends its rows to the ranks that hold their positions, and the
    rows every rank receives, placed at its positions, are exactly its shard of the global layout."""
    cfg = SequenceParallelConfig(sp, ring)
    tokens, frames = 3, 7
    g = torch.Generator().manual_seed(sp * 10 + ring)
    length = 2 * sp * 6
    rows = torch.full((2, length), -1)
    flat = rows.view(-1)
    slots = torch.randperm(flat.numel(), generator=g)[: tokens * frames].sort().values
    flat[slots] = torch.arange(tokens * frames)
    features = torch.arange(tokens * frames, dtype=torch.float64).unsqueeze(1)
    plans = [plan_routes(rows, cfg, r, tokens, frames) for r in range(sp)]
    for dst in range(sp):
        got = []
        for src in range(sp):
            split = plans[src].frames
            local = features[split.start * tokens: split.stop * tokens]
            sent = route_features(local, plans[src])
            start = sum(plans[src].send_counts[:dst])
            got.append(sent[start:start + plans[src].send_counts[dst]])
            assert plans[src].send_counts[dst] == plans[dst].recv_counts[src]
        received = torch.cat(got)
        from longvila.distributed.sharding import sequence_indices

        held = rows[:, sequence_indices(length, cfg, dst)].reshape(-1)
        want = held[plans[dst].recv_positions].double().unsqueeze(1)
        assert torch.equal(received, want)
        assert sorted(plans[dst].recv_positions.tolist()) == (held >= 0).nonzero().squeeze(1).tolist()


def test_plan_local_is_the_identity_route():
    rows = torch.tensor([[-1, 0, 1, -1], [2, 3, -1, -1]])
    plan = plan_local(rows, num_frames=2)
    features = torch.arange(4.0).unsqueeze(1) * 10
    assert route_features(features, plan).squeeze(1).tolist() == [0.0, 10.0, 20.0, 30.0]
    assert plan.recv_positions.tolist() == [1, 2, 4, 5]
