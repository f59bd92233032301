"""Ring attention (zigzag and plain) as a torch.autograd.Function with overlapped P2P.

Every rank keeps its queries and passes its key/value block (plus the keys' segment ids) around the ring:
at step i rank r holds the kv of rank ``src = (r - i) mod R``. The next block is already in flight
(``dist.batch_isend_irecv``) while the current one is being computed. Partial results are merged in fp32 with the
-inf-safe LSE merge of :mod:`longvila.distributed.lse`.

Which (q, kv) part each step computes, for causal attention:

* plain ``ring`` (rank r holds chunk r): step 0 is the causal diagonal; a block from src < r is fully visible; a
  block from src > r is entirely in the future and skipped. Rank R-1 works R times as much as rank 0.
* ``zigzag`` (rank r holds chunks r and 2R-1-r): step 0 is causal on the local [r, 2R-1-r] pair (local order is
  global order); for src < r (steps <= rank) all queries see the FIRST half (chunk src) of the incoming kv; for
  src > r only the SECOND half of the queries (chunk 2R-1-r) sees ALL of the kv. Every off-diagonal step costs
  the same, so all ranks do equal work.

Backward recomputes each block against the GLOBAL out and LSE saved by the forward (so block gradients add up
to the exact full-attention gradient), accumulates dq locally in fp32, and sends an fp32 dk/dv accumulator around
the ring together with the kv it belongs to; after R steps it arrives back at its owner.

Packed documents: pass the local (B, S_local) shard of the GLOBAL segment ids; they travel with the kv.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .block_attention import block_attention, get_block_backend
from .lse import merge_attention, merge_into

_TAG_KV, _TAG_SEG, _TAG_DKV = 11, 12, 13


class _RingComm:
    """Send to the next rank / receive from the previous one, as one batched, asynchronous P2P exchange."""

    def __init__(self, group) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        ranks = dist.get_process_group_ranks(group)
        self.next = ranks[(self.rank + 1) % self.world]
        self.prev = ranks[(self.rank - 1) % self.world]

    def exchange(self, tensors_and_tags):
        """Post send(t)->next and recv(buf)<-prev for each (t, tag); return (recv buffers, requests)."""
        ops, bufs = [], []
        for t, tag in tensors_and_tags:
            buf = torch.empty_like(t)
            ops.append(dist.P2POp(dist.isend, t, self.next, self.group, tag))
            ops.append(dist.P2POp(dist.irecv, buf, self.prev, self.group, tag))
            bufs.append(buf)
        return bufs, dist.batch_isend_irecv(ops)

    @staticmethod
    def receive(pending) -> list[torch.Tensor]:
        """The receive buffers of an :meth:`exchange` once all its sends and receives have completed."""
        bufs, reqs = pending
        for req in reqs:
            req.wait()
        return bufs


def _block_plan(step: int, rank: int, world: int, seq: int, causal: bool, zigzag: bool):
    """(query slice, kv slice, causal) for this step, or None when the block is entirely masked."""
    full = slice(0, seq)
    if step == 0:
        return full, full, causal
    if not causal:
        return full, full, False
    src = (rank - step) % world
    if zigzag:
        half = seq // 2
        return (full, slice(0, half), False) if src < rank else (slice(half, seq), full, False)
    return (full, full, False) if src < rank else None


def _seg(seg, sl):
    return None if seg is None else seg[:, sl]


def _pass_kv_on(comm, step: int, kv, kseg):
    """Start sending this step's k/v (and key segment ids) to the next rank; None on the last step."""
    if step + 1 >= comm.world:
        return None
    return comm.exchange([(kv, _TAG_KV)] + ([] if kseg is None else [(kseg, _TAG_SEG)]))


def _receive_kv(comm, pending, kv, kseg):
    """The previous rank's k/v and key segment ids once :func:`_pass_kv_on`'s exchange completes."""
    if pending is None:
        return kv, kseg
    bufs = comm.receive(pending)
    return bufs[0], (bufs[1] if kseg is not None else None)


def _ring_forward(q, k, v, seg, scale, causal, zigzag, comm, backend):
    seq = q.shape[2]
    acc_out = acc_lse = None
    kv = torch.stack([k, v]).contiguous()
    kseg = None if seg is None else seg.contiguous()
    merge = getattr(backend, "merge", merge_attention)  # a backend without its own merge uses the torch one
    for step in range(comm.world):
        pending = _pass_kv_on(comm, step, kv, kseg)
        plan = _block_plan(step, comm.rank, comm.world, seq, causal, zigzag)
        if plan is not None:
            qs, ks, blk_causal = plan
            out, lse = backend.forward(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], causal=blk_causal,
                                       scale=scale, q_segment_ids=_seg(seg, qs), k_segment_ids=_seg(kseg, ks))
            rows = None if (qs.start == 0 and qs.stop == seq) else qs
            acc_out, acc_lse = merge_into(acc_out, acc_lse, out, lse, rows=rows, merge=merge)
        kv, kseg = _receive_kv(comm, pending, kv, kseg)
    return acc_out, acc_lse


def _ring_backward(dout, q, k, v, out, lse, seg, scale, causal, zigzag, comm, backend):
    seq = q.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    kv = torch.stack([k, v]).contiguous()
    kseg = None if seg is None else seg.contiguous()
    dkv_pending = None
    dkv = None
    for step in range(comm.world):
        kv_pending = _pass_kv_on(comm, step, kv, kseg)
        plan = _block_plan(step, comm.rank, comm.world, seq, causal, zigzag)
        grads = None
        if plan is not None:
            qs, ks, blk_causal = plan
            dq_b, dk_b, dv_b = backend.backward(
                dout[:, :, qs], q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], out[:, :, qs], lse[:, :, qs],
                causal=blk_causal, scale=scale, q_segment_ids=_seg(seg, qs), k_segment_ids=_seg(kseg, ks))
            dq[:, :, qs] += dq_b.to(acc)
            grads = (ks, dk_b, dv_b)
        if step == 0:
            dkv = torch.zeros(kv.shape, dtype=acc, device=kv.device)
        else:
            dkv = comm.receive(dkv_pending)[0]
        if grads is not None:
            ks, dk_b, dv_b = grads
            dkv[0][:, :, ks] += dk_b.to(acc)
            dkv[1][:, :, ks] += dv_b.to(acc)
        if comm.world > 1:
            # Hand this kv's gradient accumulator on; after the last step it reaches the kv's owner.
            dkv_pending = comm.exchange([(dkv, _TAG_DKV)])
        kv, kseg = _receive_kv(comm, kv_pending, kv, kseg)
    if comm.world > 1:
        dkv = comm.receive(dkv_pending)[0]
    return dq, dkv[0], dkv[1]


class RingAttentionFn(torch.autograd.Function):
    """Autograd wrapper: forward returns (out in q.dtype, fp32 lse); lse is not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, segment_ids, scale, causal, zigzag, group, backend):
        comm = _RingComm(group)
        if zigzag and q.shape[2] % 2 != 0:
            raise ValueError(f"zigzag ring attention needs an even local length, got {q.shape[2]}")
        out, lse = _ring_forward(q, k, v, segment_ids, scale, causal, zigzag, comm, backend)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, segment_ids)
        ctx.scale, ctx.causal, ctx.zigzag, ctx.group, ctx.backend = scale, causal, zigzag, group, backend
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, seg = ctx.saved_tensors
        comm = _RingComm(ctx.group)
        dq, dk, dv = _ring_backward(dout, q, k, v, out, lse, seg, ctx.scale, ctx.causal, ctx.zigzag, comm,
                                    ctx.backend)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def ring_attention(q, k, v, *, scale: float, causal: bool = True, segment_ids=None, group=None, zigzag: bool = True,
                   backend="torch", return_lse: bool = False):
    """Ring attention over ``group`` on local (B, H, S_local, D) shards; returns (B, H, S_local, D).

    ``zigzag=True`` expects the zigzag layout (local = [chunk r, chunk 2R-1-r]); ``False`` contiguous chunks.
    ``segment_ids`` is the local (B, S_local) shard of the global document ids (or None). k/v may have fewer
    heads than q (GQA); they travel the ring un-replicated. ``group=None`` means the default group.
    """
    be = get_block_backend(backend)
    if group is None and not (dist.is_available() and dist.is_initialized()):
        group_size = 1
    else:
        group = group if group is not None else dist.group.WORLD
        group_size = dist.get_world_size(group)
    if group_size == 1:
        return block_attention(q, k, v, causal=causal, scale=scale, q_segment_ids=segment_ids,
                               k_segment_ids=segment_ids, backend=be, return_lse=return_lse)
    out, lse = RingAttentionFn.apply(q, k, v, segment_ids, scale, causal, zigzag, group, be)
    return (out, lse) if return_lse else out


def zigzag_ring_attention(q, k, v, **kwargs):
    """:func:`ring_attention` with the zigzag layout (balanced causal work)."""
    return ring_attention(q, k, v, zigzag=True, **kwargs)
