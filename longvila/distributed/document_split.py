"""Packed documents as mask-free sub-blocks: the splitting that the fused backends and local attention share.

A packed row's documents are the runs of its segment ids (``segment_ids``: a new document wherever the position
restarts at 0). Fused attention ops take no mask, so a block with several documents runs one sub-block per
document (``document_pieces``): the cost is the sum of the documents' squares and no (Sq, Sk) mask is built.
"""

from __future__ import annotations

import torch

from .block_contract import MathBackend, check_block_inputs
from .lse import merge_attention
from .torch_flash_ops import accumulation_dtype


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document id per token: a new document starts wherever the position restarts at 0."""
    return torch.cumsum((position_ids == 0).to(torch.long), dim=-1)


def _runs(ids: torch.Tensor) -> dict[int, tuple[int, int]] | None:
    """``{id: (start, end)}`` of one row's segment ids, or None when some id occurs in two separate runs."""
    values, counts = torch.unique_consecutive(ids, return_counts=True)
    values, ends = values.tolist(), torch.cumsum(counts, 0).tolist()
    if len(set(values)) != len(values):
        return None
    return {v: (e - c, e) for v, e, c in zip(values, ends, counts.tolist())}


def document_pieces(q_segment_ids, k_segment_ids, causal: bool):
    """Split a segment-masked block into mask-free sub-blocks: per batch row, ``(q_start, q_end, k_start, k_end)``
    for every document present among both the queries and the keys.

    Returns None when that split is not exact: a document's ids are not one contiguous run, or (causal) a
    document's query and key ranges differ, where the block's causal diagonal would not be the sub-block's.
    Queries outside every piece see no key (out 0, LSE -inf); keys outside every piece get no gradient.
    """
    pieces = []
    for q_ids, k_ids in zip(q_segment_ids, k_segment_ids):
        q_runs, k_runs = _runs(q_ids), _runs(k_ids)
        if q_runs is None or k_runs is None:
            return None
        row = [(*q_runs[d], *k_runs[d]) for d in q_runs if d in k_runs]
        if causal and any(qs != ks or qe != ke for qs, qe, ks, ke in row):
            return None
        pieces.append(row)
    return pieces


class DocumentSplitBackend:
    """Shared body of the backends whose fused op takes no mask (libtorch's flash ops, the flash-attn package).

    Subclasses supply :meth:`_dense_ops`: the op's mask-free forward and backward for these queries, or None where
    it does not apply. A block without segment ids is one call of the op. A block with segment ids (packed
    documents) is split into one mask-free sub-block per document (:func:`document_pieces`): the cost is the sum
    of the documents' squares and no (Sq, Sk) tensor is built. Reading the ids to find the documents is a device
    sync on CUDA. Ids that are not contiguous runs, causal blocks with Sq != Sk (the fused ops align those
    bottom-right, the contract top-left), and inputs the op does not take, use :class:`MathBackend`.
    """

    name = ""
    merge = staticmethod(merge_attention)

    def __init__(self) -> None:
        self._math = MathBackend()

    def _dense_ops(self, q):
        """(forward, backward) of the fused op for these queries, or None to use the math path."""
        raise NotImplementedError

    def _route(self, q, k, causal: bool, q_segment_ids, k_segment_ids):
        """``(route, pieces)``: route is "flash" (whole block), "documents" (per-document pieces) or "math"."""
        if self._dense_ops(q) is None or (causal and q.shape[2] != k.shape[2]):
            return "math", None
        if q_segment_ids is None:
            return "flash", None
        pieces = document_pieces(q_segment_ids, k_segment_ids, causal)
        return ("math", None) if pieces is None else ("documents", pieces)

    def forward(self, q, k, v, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        route, pieces = self._route(q, k, causal, q_segment_ids, k_segment_ids)
        if route == "math":
            return self._math.forward(q, k, v, causal=causal, scale=scale, q_segment_ids=q_segment_ids,
                                      k_segment_ids=k_segment_ids)
        fwd, _ = self._dense_ops(q)
        if route == "flash":
            return fwd(q, k, v, causal=causal, scale=scale)
        out = torch.zeros_like(q)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=accumulation_dtype(q), device=q.device)
        for b, row in enumerate(pieces):
            for qs, qe, ks, ke in row:
                o, l = fwd(q[b:b + 1, :, qs:qe], k[b:b + 1, :, ks:ke], v[b:b + 1, :, ks:ke], causal=causal,
                           scale=scale)
                out[b:b + 1, :, qs:qe] = o
                lse[b:b + 1, :, qs:qe] = l
        return out, lse

    def backward(self, dout, q, k, v, out, lse, *, causal, scale, q_segment_ids=None, k_segment_ids=None):
        check_block_inputs(q, k, v, causal, q_segment_ids, k_segment_ids)
        route, pieces = self._route(q, k, causal, q_segment_ids, k_segment_ids)
        if route == "math":
            return self._math.backward(dout, q, k, v, out, lse, causal=causal, scale=scale,
                                       q_segment_ids=q_segment_ids, k_segment_ids=k_segment_ids)
        _, bwd = self._dense_ops(q)
        if route == "flash":
            return bwd(dout, q, k, v, out, lse, causal=causal, scale=scale)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for b, row in enumerate(pieces):
            for qs, qe, ks, ke in row:
                q_part = (slice(b, b + 1), slice(None), slice(qs, qe))
                k_part = (slice(b, b + 1), slice(None), slice(ks, ke))
                gq, gk, gv = bwd(dout[q_part], q[q_part], k[k_part], v[k_part], out[q_part], lse[q_part],
                                 causal=causal, scale=scale)
                dq[q_part], dk[k_part], dv[k_part] = gq, gk, gv
        return dq, dk, dv
