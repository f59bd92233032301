"""sequence_parallel_attention in every SP mode on 4 real gloo ranks vs full-sequence attention on one process."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import AttentionInterface

from longvila.constants import IGNORE_INDEX
from longvila.distributed.attention import AttentionDispatcher
from longvila.distributed.loss import normalised_loss
from longvila.distributed.mesh import SequenceParallelConfig
from longvila.distributed.sharding import gather_sequence, shard_sequence
from longvila.engine.step_metrics import StepReductions
from longvila.kernels._triton import interpreting

from .sp_cases import Case, check_all_cases, check_case, packed_positions, reference_attention
from .world import get_mesh

MODES = {
    "ulysses4": SequenceParallelConfig(4, 1, "zigzag_ring"),
    "ulysses4_contiguous": SequenceParallelConfig(4, 1, "ring"),
    "zigzag_ring4": SequenceParallelConfig(4, 4, "zigzag_ring"),
    "ring4": SequenceParallelConfig(4, 4, "ring"),
    "2d_ring2_ulysses2": SequenceParallelConfig(4, 2, "zigzag_ring"),
    "2d_ring2_ulysses2_plain": SequenceParallelConfig(4, 2, "ring"),
    "sp2_zigzag_dp2": SequenceParallelConfig(2, 2, "zigzag_ring"),
    "sp2_ulysses_dp2": SequenceParallelConfig(2, 1, "zigzag_ring"),
    "sp1_dp4": SequenceParallelConfig(1, 1, "zigzag_ring"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_sp_attention_matches_full_sequence(world4, mode):
    counts = world4.run(check_all_cases, MODES[mode])
    assert counts == [counts[0]] * 4 and counts[0] >= 5


def _qwen2(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).double()


def _packed_batch(length, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (1, length), generator=g)
    pos = packed_positions(1, length, g)
    labels = ids.clone()
    labels[torch.rand(1, length, generator=g) < 0.3] = IGNORE_INDEX
    # shift ONCE on the full sequence; no target crosses a document start
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    shifted[:, :-1][pos[:, 1:] == 0] = IGNORE_INDEX
    seg = torch.cumsum((pos == 0).long(), -1)
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & (seg[0, :, None] == seg[0, None, :])
    return ids, pos, shifted, allowed[None, None]


def _ce_sum(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def _hf_model_under_sp(rank, world, cfg):
    groups = get_mesh(cfg)
    name = "longvila-sp-test"
    AttentionInterface.register(name, AttentionDispatcher(cfg, groups))
    model = _qwen2()
    ids, pos, shifted, mask = _packed_batch(length=45)

    model.config._attn_implementation = "sdpa"  # reference: one process, explicit block-diagonal causal mask
    ref_logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    count = int((shifted != IGNORE_INDEX).sum())
    (_ce_sum(ref_logits, shifted) / count).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    model.config._attn_implementation = name
    model.gradient_checkpointing_enable()
    model.train()
    sh = shard_sequence({"input_ids": ids, "labels": shifted, "position_ids": pos}, cfg, groups)
    logits = model(input_ids=sh["input_ids"], position_ids=sh["position_ids"],
                   attention_mask={"full_attention": None}, segment_ids=sh["segment_ids"]).logits
    local_count = int((sh["labels"] != IGNORE_INDEX).sum())  # each rank counts its own shard
    (global_count,) = StepReductions(torch.device("cpu")).sum_over_shards([local_count])
    assert global_count == count
    normalised_loss(_ce_sum(logits, sh["labels"]), global_count, world).backward()
    full = gather_sequence(logits.detach(), cfg, groups, dim=1)[:, :45]
    assert (full - ref_logits.detach()).abs().max().item() < 1e-10
    for n, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad)
        grad /= world  # DeepSpeed's average over the DP x SP world
        err = (grad - ref_grads[n]).abs().max().item()
        assert err < 1e-10, f"{n}: {err:.2e}"
    return True


@pytest.mark.parametrize("mode", ["2d_ring2_ulysses2", "ulysses4"])
def test_hf_qwen2_through_attention_interface_matches_single_process(world4, mode):
    """Tiny Qwen2 (4 q / 2 kv heads: ulysses4 replicates kv) with gradient checkpointing and packed documents."""
    world4.run(_hf_model_under_sp, MODES[mode])


def test_hf_hook_without_sp_derives_documents_from_position_ids():
    fn = AttentionDispatcher(SequenceParallelConfig(1), None)
    q = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    out, weights = fn(torch.nn.Module(), q, q[:, :2], q[:, :2], None, scaling=0.5, position_ids=pos)
    ref = reference_attention(q, q[:, :2], q[:, :2], scale=0.5, causal=True,
                              segment_ids=torch.tensor([[1, 1, 1, 2, 2, 2]]))
    assert weights is None and out.shape == (1, 6, 4, 8)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="attention_mask"):
        fn(torch.nn.Module(), q, q, q, torch.ones(1, 1, 6, 6))
    sp_fn = AttentionDispatcher(SequenceParallelConfig(2), None)
    with pytest.raises(ValueError, match="segment_ids"):
        sp_fn(torch.nn.Module(), q, q, q, None, position_ids=pos)


class _TritonBlocksOnCuda:
    """The Triton block backend run compiled on this machine's GPU for ranks whose tensors live on CPU.

    Each block forward/backward and each LSE merge moves its inputs to the GPU, runs the compiled kernels there and
    moves the results back, so the ring / Ulysses / 2D code and its gloo exchanges run unchanged on CPU tensors.
    The exchanges cannot move to the GPU on a one-GPU machine: gloo's send/recv take host memory, and NCCL refuses
    several ranks on one device.
    """

    name = "triton"

    def __init__(self) -> None:
        from longvila.distributed.block_attention import get_block_backend

        self.inner = get_block_backend("triton")
        self.calls = 0

    def _on_gpu(self, fn, *args, **kwargs):
        def gpu(t):
            return t.cuda() if isinstance(t, torch.Tensor) else t

        self.calls += 1
        result = fn(*(gpu(a) for a in args), **{k: gpu(v) for k, v in kwargs.items()})
        assert all(t is None or t.is_cuda for t in result)
        return tuple(None if t is None else t.cpu() for t in result)

    def merge(self, out1, lse1, out2, lse2):
        return self._on_gpu(self.inner.merge, out1, lse1, out2, lse2)

    def forward(self, q, k, v, **kwargs):
        return self._on_gpu(self.inner.forward, q, k, v, **kwargs)

    def backward(self, dout, q, k, v, out, lse, **kwargs):
        return self._on_gpu(self.inner.backward, dout, q, k, v, out, lse, **kwargs)


def _triton_blocks(rank, world, compiled):
    # Interpreter mode: CPU ranks inherit the session's TRITON_INTERPRET=1 (they are spawned from it), so the kernels
    # are interpreted. Compiled mode: the blocks run on the GPU (_TritonBlocksOnCuda).
    backend = _TritonBlocksOnCuda() if compiled else "triton"
    for mode in ("zigzag_ring4", "2d_ring2_ulysses2", "ulysses4"):
        check_case(MODES[mode], Case(hq=4, hkv=2, length=30, packed=True, dtype=torch.float32, backend=backend), 1)
        check_case(MODES[mode], Case(hq=4, hkv=1, length=33, dtype=torch.float32, backend=backend), 2)
    return backend.calls if compiled else None


TRITON_MODES = [
    pytest.param(False, id="interpreter", marks=[pytest.mark.triton, pytest.mark.skipif(
        not interpreting(), reason="the gloo ranks run on CPU tensors, so the Triton kernels need the interpreter "
        "session (TRITON_INTERPRET=1 pytest -m triton)")]),
    pytest.param(True, id="compiled", marks=[pytest.mark.triton, pytest.mark.gpu, pytest.mark.skipif(
        interpreting() or not torch.cuda.is_available(),
        reason="compiled Triton kernels need a CUDA device and a session without TRITON_INTERPRET=1")]),
]


@pytest.mark.parametrize("compiled", TRITON_MODES)
def test_sp_attention_with_triton_blocks(world4, compiled):
    """The Triton blocks plugged into ring / 2D / Ulysses, the ring steps merged by the Triton LSE kernel: in the
    interpreter on CPU ranks (about 25 s), or compiled on a CUDA device (the ranks share it)."""
    calls = world4.run(_triton_blocks, compiled, timeout=500)
    if compiled:
        assert all(n > 0 for n in calls), calls  # every rank ran blocks on the GPU
