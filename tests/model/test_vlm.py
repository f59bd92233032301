import copy

import pytest
import torch
import torch.nn.functional as F

from longvila.constants import IGNORE_INDEX as X
from longvila.model.loss import shift_labels

TOKENS = 4  # tiny SigLIP: 4x4 patches -> 2x2 after the merge


def test_tokens_per_frame_and_ids(tiny):
    model, tok, _ = tiny
    assert model.tokens_per_frame == TOKENS
    ids = model.tokenizer_ids
    assert tok.convert_ids_to_tokens([ids.image, ids.video]) == ["<image>", "<video>"]
    assert tok.decode([ids.newline]) == "\n"


def test_encode_frames_uses_penultimate_hidden_state(tiny):
    model, _, _ = tiny
    frames = torch.randn(3, 3, 64, 64)
    feats = model.encode_frames(frames)
    assert feats.shape == (3, TOKENS, 128)
    hidden = model.vision_tower(pixel_values=frames, output_hidden_states=True).hidden_states
    torch.testing.assert_close(feats, model.mm_projector(hidden[-2]))
    assert not torch.allclose(feats, model.mm_projector(hidden[-1]))


def test_build_sequence_expands_image_and_video(tiny, media_batch):
    model, _, _ = tiny
    calls = []
    original = model.frame_encoder

    def counting_encoder(frames):
        calls.append(frames.shape)
        return original(frames)

    model.frame_encoder = counting_encoder
    b = media_batch
    seq = model.build_sequence(b["input_ids"], b["labels"], b["attention_mask"], b["media"])
    assert calls == [(4, 3, 64, 64)], "all frames of the batch in ONE encoder call"

    ids = model.tokenizer_ids
    lengths = b["attention_mask"].sum(1).tolist()
    expanded = [lengths[0] - 1 + TOKENS, lengths[1] - 1 + 3 * (TOKENS + 1)]
    assert seq.inputs_embeds.shape == (2, max(expanded), 128)
    assert seq.attention_mask.sum(1).tolist() == expanded

    feats = original(torch.cat(b["media"][0] + b["media"][1]))
    newline = model.llm.get_input_embeddings().weight[ids.newline]
    for row, frames in ((0, feats[:1]), (1, feats[1:])):
        ph = int((b["input_ids"][row] == (ids.image if row == 0 else ids.video)).nonzero())
        span = seq.inputs_embeds[row, ph : ph + frames.shape[0] * (TOKENS + row)]
        if row == 0:
            torch.testing.assert_close(span, frames[0])
        else:
            span = span.reshape(3, TOKENS + 1, 128)
            torch.testing.assert_close(span[:, :TOKENS], frames)
            torch.testing.assert_close(span[:, TOKENS], newline.expand(3, 128))
        assert (seq.labels[row, ph : ph + frames.shape[0] * (TOKENS + row)] == X).all()
        # Text around the media keeps its embeddings and labels.
        text_embeds = model.llm.get_input_embeddings()(b["input_ids"][row])
        assert torch.equal(seq.inputs_embeds[row, :ph], text_embeds[:ph])
        assert torch.equal(seq.labels[row, :ph], b["labels"][row, :ph])
        n_after = lengths[row] - ph - 1
        start = ph + frames.shape[0] * (TOKENS + row)
        assert torch.equal(seq.labels[row, start : start + n_after], b["labels"][row, ph + 1 : lengths[row]])
        assert torch.equal(seq.inputs_embeds[row, start : start + n_after], text_embeds[ph + 1 : lengths[row]])

    # Positions: arange per sample; right padding restarts at 0 and is labelled IGNORE.
    assert seq.position_ids[1].tolist() == list(range(expanded[1]))
    pad = expanded[1] - expanded[0]
    assert seq.position_ids[0].tolist() == list(range(expanded[0])) + list(range(pad))
    assert (seq.labels[0, expanded[0] :] == X).all()


def test_placeholder_count_mismatch_names_sample(tiny, media_batch):
    model, _, _ = tiny
    b = media_batch
    with pytest.raises(ValueError, match="sample 1: 1 media placeholders but 2 media entries"):
        model.build_sequence(b["input_ids"], b["labels"], b["attention_mask"], [b["media"][0], b["media"][1] * 2])
    with pytest.raises(ValueError, match="sample 0: 1 media placeholders but 0"):
        model.build_sequence(b["input_ids"], b["labels"], b["attention_mask"], None)
    with pytest.raises(ValueError, match="T=3"):
        model.build_sequence(b["input_ids"], b["labels"], b["attention_mask"], [b["media"][1], b["media"][1]])
    with pytest.raises(ValueError, match="2 samples"):
        model.build_sequence(b["input_ids"], b["labels"], b["attention_mask"], [b["media"][0]])


def test_packed_text_positions_pass_through_and_loss_masks_document_boundaries(tiny):
    model, _, _ = tiny
    ids = torch.randint(10, 1900, (1, 9))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1]])
    seq = model.build_sequence(ids, ids.clone(), None, None, pos)
    assert torch.equal(seq.position_ids, pos)
    out = model(ids, ids.clone(), None, None, pos)
    assert int(out.num_tokens) == 9 - 3  # last token + two document boundaries have no target


def test_media_inside_packed_sequence_renumbers_its_document(tiny):
    model, tok, _ = tiny
    img = model.tokenizer_ids.image
    ids = torch.tensor([[11, 12, 13, 11, img, 12, 13]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    seq = model.build_sequence(ids, torch.full_like(ids, X), None, [[torch.randn(1, 3, 64, 64)]], pos)
    assert seq.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5, 6]]


def test_forward_matches_logits_path(tiny, media_batch):
    model, _, _ = tiny
    b = media_batch
    out = model(**b)
    seq = model.build_sequence(b["input_ids"], b["labels"], b["attention_mask"], b["media"])
    targets = shift_labels(seq.labels, seq.position_ids)
    logits = model.logits(b["input_ids"], b["labels"], b["attention_mask"], b["media"])
    flat = logits.reshape(-1, logits.shape[-1]).float()
    ref = F.cross_entropy(flat, targets.reshape(-1), ignore_index=X, reduction="sum")
    assert int(out.num_tokens) == int((b["labels"] != X).sum())  # every answer token keeps its target
    torch.testing.assert_close(out.loss_sum, ref, atol=1e-4, rtol=1e-5)
    assert out.loss_sum.dtype == torch.float32 and out.num_tokens.dtype == torch.int64


def test_no_supervised_tokens_gives_zero_with_graph(tiny, media_batch):
    model, _, _ = tiny
    b = dict(media_batch, labels=torch.full_like(media_batch["labels"], X))
    out = model(**b)
    assert out.loss_sum.item() == 0.0 and int(out.num_tokens) == 0
    out.loss_sum.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_hooks_are_used(tiny, media_batch):
    model, _, _ = tiny
    seen = {}

    def sharder(seq):
        seen["labels"] = seq.labels.clone()
        return seq

    def loss_fn(hidden, weight, labels):
        seen["hidden"] = hidden.shape
        return hidden.sum() * 0, torch.tensor(7)

    model.sequence_sharder, model.loss_fn = sharder, loss_fn
    out = model(**media_batch)
    assert int(out.num_tokens) == 7 and seen["hidden"][-1] == 128
    # The sharder already sees globally shifted labels.
    b = media_batch
    seq = model.build_sequence(b["input_ids"], b["labels"], b["attention_mask"], b["media"])
    assert torch.equal(seen["labels"], shift_labels(seq.labels, seq.position_ids))


def test_freezing_leaves_frozen_weights_untouched(tiny, media_batch):
    model, _, _ = tiny
    model.train()
    model.set_trainable(vision_tower=False, mm_projector=True, llm=False)
    assert model.config["tune_mm_projector"] and not model.config["tune_language_model"]
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**media_batch)
    (out.loss_sum / out.num_tokens).backward()
    opt.step()
    for name, p in model.named_parameters():
        if name.startswith("mm_projector."):
            assert p.grad is not None
            assert not torch.equal(p, before[name]), name
        else:
            assert p.grad is None, name
            assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("chunk", [0, 1, 3])
def test_gradient_checkpointing_matches(tiny, media_batch, chunk):
    """Per-layer checkpoints (chunk 0) or whole-tower recompute per chunk of frames: the same gradients as
    keeping everything (4 frames: 4 chunks, 2 uneven chunks)."""
    model, _, _ = tiny
    model.train()
    ref = copy.deepcopy(model)
    ref.vision_chunk_frames = 0
    model.vision_chunk_frames = chunk
    model.enable_gradient_checkpointing()
    assert model.llm.model.gradient_checkpointing
    assert model.vision_tower.encoder.gradient_checkpointing == (chunk == 0)
    for m in (model, ref):
        out = m(**media_batch)
        out.loss_sum.backward()
    ref_grads = dict(ref.named_parameters())
    n = 0
    for name, p in model.named_parameters():
        if p.grad is None:
            assert ref_grads[name].grad is None, name
            continue
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-6, rtol=1e-5)
        n += 1
    assert n > 20


@pytest.mark.parametrize("layer", [-1, -2, -3, 0, 2])
def test_vision_features_match_hf_hidden_states(tiny, layer):
    from longvila.model.vlm import vision_features

    model, _, _ = tiny
    frames = torch.randn(2, 3, 64, 64)
    ref = model.vision_tower(pixel_values=frames, output_hidden_states=True).hidden_states[layer]
    torch.testing.assert_close(vision_features(model.vision_tower, frames, layer), ref)
    with pytest.raises(ValueError, match="out of range"):
        vision_features(model.vision_tower, frames, 3)


def test_public_api_exports():
    import longvila.model as lm

    for name in lm.__all__:
        assert getattr(lm, name) is not None
    with pytest.raises(AttributeError):
        lm.does_not_exist


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_forward_backward_matches_cpu(tiny, media_batch):
    model, _, _ = tiny
    cpu = model(**media_batch)
    gpu_model = copy.deepcopy(model).to("cuda", torch.bfloat16)
    batch = {
        "input_ids": media_batch["input_ids"].cuda(),
        "labels": media_batch["labels"].cuda(),
        "attention_mask": media_batch["attention_mask"].cuda(),
        "media": [[m.cuda() for m in sample] for sample in media_batch["media"]],
    }
    out = gpu_model(**batch)
    assert int(out.num_tokens) == int(cpu.num_tokens)
    torch.testing.assert_close(out.loss_sum.cpu(), cpu.loss_sum.detach(), rtol=2e-2, atol=0.5)
    out.loss_sum.backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu_model.parameters() if p.grad is not None)


@pytest.mark.parametrize("ring", [1, 2])
def test_text_batches_embed_only_the_local_shard(tiny, ring):
    """Under SP a text-only batch is sharded as token ids and embedded after: each rank embeds S/SP rows, and the
    rows equal the shard of the fully embedded sequence (the path media batches still take)."""
    from dataclasses import replace

    from longvila.distributed.integration import SequenceSharder
    from longvila.distributed.mesh import SequenceParallelConfig
    from longvila.model.loss import shift_labels

    model, tok, _ = tiny
    first_plain = max(tok.added_tokens_decoder) + 1  # below it sit the special and media tokens
    ids = torch.randint(first_plain, 500, (2, 37))
    labels, mask = ids.clone(), torch.ones_like(ids, dtype=torch.bool)
    mask[1, 30:] = False
    positions = torch.cat([torch.arange(20), torch.arange(17)]).expand(2, 37)
    embed = model.llm.get_input_embeddings()
    for rank in range(2):
        sharder = SequenceSharder(SequenceParallelConfig(sp_size=2, ring_size=ring), rank)
        full = model.build_sequence(ids, labels, mask, None, positions)
        want = sharder(replace(full, labels=shift_labels(full.labels, full.position_ids)))
        text = model.build_text_sequence(ids, labels, mask, positions)
        got = sharder(replace(text, labels=shift_labels(text.labels, text.position_ids)))
        assert got.inputs_embeds is None and got.token_ids.shape == (2, 20)  # 37 -> padded 40 -> 20 per rank
        real = want.attention_mask
        assert torch.equal(embed(got.token_ids)[real], want.inputs_embeds[real])
        for field in ("labels", "position_ids", "attention_mask", "segment_ids"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    seen = []
    handle = embed.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        model.sequence_sharder = SequenceSharder(SequenceParallelConfig(sp_size=2, ring_size=ring), 0)
        model.run_backbone = lambda embeds, *a, **k: embeds  # the local shard is all this test looks at
        model(ids, labels, mask, position_ids=positions)
    finally:
        handle.remove()
    assert seen == [(2, 20)]


def _saved_bytes(model, frames):
    """Bytes autograd keeps from encoding ``frames`` (what stays alive until the backward)."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model.encode_frames(frames)
    if out.requires_grad:
        out.sum().backward()
    return total[0]


@pytest.mark.parametrize("trains", ["all", "projector", "lora", "nothing"])
def test_chunked_tower_keeps_only_the_pixels(tiny, trains):
    """With chunks, what the tower keeps for the backward is each chunk's input pixels, whatever the frame count;
    a tower and projector that do not train keep nothing."""
    model, _, _ = tiny
    model.train()
    if trains == "lora":
        from longvila.model.lora import apply_vision_lora

        model.set_trainable(vision_tower=False, mm_projector=False, llm=False)
        apply_vision_lora(model, r=2, alpha=4)
    else:
        model.set_trainable(vision_tower=trains == "all", mm_projector=trains in ("all", "projector"), llm=False)
    model.vision_chunk_frames = 2
    pixels = 3 * 64 * 64 * 4
    saved = [_saved_bytes(model, torch.randn(n, 3, 64, 64)) for n in (3, 6, 12)]
    assert saved == ([0, 0, 0] if trains == "nothing" else [n * pixels for n in (3, 6, 12)])
    model.vision_chunk_frames = 0
    if trains in ("all", "lora"):  # without chunks the tower keeps its activations, more than the pixels
        assert _saved_bytes(model, torch.randn(12, 3, 64, 64)) > saved[-1]


def test_rank_frames_keep_their_dtype_for_the_encoder(tiny):
    """The frames reach the frame encoder in their own dtype: V-NIAH's cached-feature placeholders number the
    frames, and a bf16 model must not round frame 299 to 300 before the encoder looks it up."""
    from longvila.distributed.mmsp import split_frames
    from longvila.eval.vniah import frame_placeholder

    model, _, _ = tiny
    model.to(torch.bfloat16)
    frames = model.rank_frames([[frame_placeholder(300)]], None, split_frames(300, 1, 2))
    assert frames.dtype == torch.float32 and frames[:, 0, 0, 0].tolist() == list(range(150, 300))
    padded = model.rank_frames([[frame_placeholder(5)]], None, split_frames(5, 1, 2))  # 2 real + 1 dummy frame
    assert padded[:, 0, 0, 0].tolist() == [3.0, 4.0, 0.0]
