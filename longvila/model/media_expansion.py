"""Media expansion: how ``VILAModel`` turns placeholders into frame positions, as integers.

Split from the model so each step reads on its own: :func:`check_media` (or :func:`check_frame_counts`, when a
loader gives frame counts) validates a batch before any compute; :func:`layout_row` expands one sample: each
position gets a token id (text and the per-frame newline) or the row of the frame feature it will hold
(``frame * tokens_per_frame + token``; ``<image>``: the frame's T tokens; ``<video>``: per frame, T tokens then
the "\\n" token), expanded positions are ignored by the loss and continue their document's positions; and
:func:`right_pad` stacks the rows with padding as a document of its own. Sequence-parallel training shards that
integer layout and embeds only the rank's own positions, so no rank ever holds the whole (S x H) sequence
(``longvila/distributed/media_routing.py`` brings each feature row to its position); generation embeds it whole.
"""

from __future__ import annotations

import torch

from longvila.constants import IGNORE_INDEX


def video_positions(num_frames: int, tokens_per_frame: int) -> int:
    """Sequence positions a video placeholder becomes: each frame's projected tokens, then the newline embedding."""
    return num_frames * (tokens_per_frame + 1)


def check_media(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None,
                media: list[list[torch.Tensor]] | None, position_ids: torch.Tensor | None, image_id: int,
                video_id: int) -> tuple[torch.Tensor, list[list[torch.Tensor]], torch.Tensor]:
    """One-line errors for a malformed batch; returns ``(bool attention_mask, media, is_placeholder)``."""
    if input_ids.dim() != 2 or labels.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must both be (B, L)")
    bsz = input_ids.shape[0]
    attention_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                      else attention_mask.to(torch.bool))
    if position_ids is not None and position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids {tuple(position_ids.shape)} != input_ids {tuple(input_ids.shape)}")
    media = media if media is not None else [[] for _ in range(bsz)]
    if len(media) != bsz:
        raise ValueError(f"media has {len(media)} entries for a batch of {bsz} samples")
    is_placeholder = (input_ids == image_id) | (input_ids == video_id)
    for b in range(bsz):
        real = is_placeholder[b] & attention_mask[b]
        if int(real.sum()) != len(media[b]):
            raise ValueError(f"sample {b}: {int(real.sum())} media placeholders but {len(media[b])} media entries")
        for k, (tok, m) in enumerate(zip(input_ids[b][real].tolist(), media[b])):
            if m.dim() != 4:
                raise ValueError(f"sample {b} media {k}: expected (T, 3, H, W), got shape {tuple(m.shape)}")
            if tok == image_id and m.shape[0] != 1:
                raise ValueError(f"sample {b} media {k}: <image> needs T=1 frame, got T={m.shape[0]}")
    return attention_mask, media, is_placeholder


def check_frame_counts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, media_frames: list[list[int]],
                       ids) -> torch.Tensor:
    """One-line errors for a batch whose media come as frame counts (each rank loaded only its own frames);
    returns the bool attention mask."""
    attention_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                      else attention_mask.to(torch.bool))
    if len(media_frames) != input_ids.shape[0]:
        raise ValueError(f"media_frames has {len(media_frames)} entries for a batch of {input_ids.shape[0]} samples")
    for b, counts in enumerate(media_frames):
        tokens = input_ids[b][attention_mask[b]]
        kinds = tokens[(tokens == ids.image) | (tokens == ids.video)].tolist()
        if len(kinds) != len(counts):
            raise ValueError(f"sample {b}: {len(kinds)} media placeholders but {len(counts)} media entries")
        for k, (tok, count) in enumerate(zip(kinds, counts)):
            if count < 1 or (tok == ids.image and count != 1):
                raise ValueError(f"sample {b} media {k}: {count} frames for a "
                                 f"{'<image>' if tok == ids.image else '<video>'}")
    return attention_mask


def layout_row(tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None, frame_counts: list[int],
               first_frame: int, tokens_per_frame: int, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    """One sample's real tokens -> (token ids, feature rows, labels, positions), all (n,) integer.

    A placeholder with ``frame_counts[k]`` frames becomes, per frame, ``tokens_per_frame`` feature positions (their
    feature row; token id 0) and for a video the newline token. Frames are numbered over the whole batch from ``first_frame``. Text positions have feature row -1.
    """
    device = tokens.device
    placeholders = ((tokens == ids.image) | (tokens == ids.video)).nonzero().squeeze(1).tolist()
    if len(placeholders) != len(frame_counts):
        raise ValueError(f"{len(placeholders)} media placeholders but {len(frame_counts)} media entries")
    t = tokens_per_frame
    chunks_i, chunks_f, chunks_l, chunks_p, prev, frame = [], [], [], [], 0, first_frame
    for p, count in zip(placeholders, frame_counts):
        chunks_i.append(tokens[prev:p])
        chunks_f.append(torch.full((p - prev,), -1, dtype=torch.long, device=device))
        chunks_l.append(labels[prev:p])
        width = t + 1 if int(tokens[p]) == ids.video else t
        rows = (frame + torch.arange(count, device=device)).unsqueeze(1) * t + torch.arange(t, device=device)
        feature_rows = torch.full((count, width), -1, dtype=torch.long, device=device)
        feature_rows[:, :t] = rows
        token_ids = torch.zeros((count, width), dtype=torch.long, device=device)
        token_ids[:, t:] = ids.newline
        chunks_i.append(token_ids.reshape(-1))
        chunks_f.append(feature_rows.reshape(-1))
        chunks_l.append(labels.new_full((count * width,), IGNORE_INDEX))
        if positions is not None:
            chunks_p.append(positions[prev:p])
            chunks_p.append(positions[p] + torch.arange(count * width, device=device))
        frame += count
        prev = p + 1
    chunks_i.append(tokens[prev:])
    chunks_f.append(torch.full((tokens.shape[0] - prev,), -1, dtype=torch.long, device=device))
    chunks_l.append(labels[prev:])
    seq_i, seq_f, seq_l = torch.cat(chunks_i), torch.cat(chunks_f), torch.cat(chunks_l)
    if positions is None:
        return seq_i, seq_f, seq_l, torch.arange(seq_i.shape[0], device=device)
    if not placeholders:
        return seq_i, seq_f, seq_l, positions
    chunks_p.append(positions[prev:])
    return seq_i, seq_f, seq_l, renumber_documents(torch.cat(chunks_p))


def renumber_documents(pos: torch.Tensor) -> torch.Tensor:
    """Recount positions after expansion: each document keeps its first position and counts up by one."""
    n = pos.shape[0]
    idx = torch.arange(n, device=pos.device)
    starts = pos == 0
    starts[0] = True
    start_idx = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=0).values
    return pos[start_idx] + (idx - start_idx)


def right_pad_rows(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """Integer rows (n,) stacked to (B, max n), padded on the right with ``value``."""
    out = rows[0].new_full((len(rows), max(r.shape[0] for r in rows)), value)
    for b, row in enumerate(rows):
        out[b, :row.shape[0]] = row
    return out


def right_pad(
    seqs_e: list[torch.Tensor], seqs_l: list[torch.Tensor], seqs_p: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of embeddings (n, H) or token ids (n,) -> (values, labels, positions, mask), zero-padded on the right."""
    bsz, seq_len = len(seqs_e), max(e.shape[0] for e in seqs_e)
    ref = seqs_e[0]
    labels = seqs_l[0].new_full((bsz, seq_len), IGNORE_INDEX)
    positions = seqs_p[0].new_zeros(bsz, seq_len)
    mask = torch.zeros(bsz, seq_len, dtype=torch.bool, device=ref.device)
    rows_e = []
    for b, (e, lab, p) in enumerate(zip(seqs_e, seqs_l, seqs_p)):
        n = e.shape[0]
        rows_e.append(torch.cat([e, e.new_zeros(seq_len - n, *e.shape[1:])]) if n < seq_len else e)
        labels[b, :n] = lab
        positions[b, :n] = p
        positions[b, n:] = torch.arange(seq_len - n, device=p.device)  # padding: its own document
        mask[b, :n] = True
    return torch.stack(rows_e), labels, positions, mask
