"""--fused_kernels: the Triton RMSNorm / RoPE / chunked CE give the stock model's loss and grads.

The comparison runs in two modes, one per place the kernels run:

* ``interpreter``: both models on CPU, the fused one through Triton's CPU interpreter; runs in the interpreter
  session, ``TRITON_INTERPRET=1 pytest -m triton``.
* ``compiled``: the fused model on a CUDA device with the compiled kernels (marked ``gpu`` as well, so the GPU
  session, ``pytest -m gpu``, runs it). The reference stays the stock model on CPU: on CUDA the stock model's default
  loss is itself the Triton chunked CE (longvila/model/loss.py), so a CUDA reference would compare a kernel with
  itself.

Each mode skips where its kernels cannot run (tests/conftest.py skips every ``triton`` test without CUDA or the
interpreter).
"""

import copy

import pytest
import torch

from longvila.kernels._triton import interpreting
from longvila.model.checkpoint import load_vila
from longvila.model.fused import enable_fused_kernels, fused_cross_entropy_sum
from longvila.model.tiny import tiny_model_path


def fused_kernels_active(model) -> bool:
    return model.loss_fn is fused_cross_entropy_sum and any(
        getattr(m, "_longvila_fused_rope", False) for m in model.llm.modules())


def packed_batch(vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (2, 37), generator=generator)
    labels = ids.clone()
    labels[:, :5] = -100
    positions = torch.cat([torch.arange(20), torch.arange(17)]).expand(2, -1).clone()
    return dict(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                position_ids=positions)


MODES = [
    pytest.param("cpu", id="interpreter", marks=[pytest.mark.triton, pytest.mark.skipif(
        not interpreting(), reason="the fused modules run the Triton kernels on CPU only in the interpreter session "
        "(TRITON_INTERPRET=1 pytest -m triton)")]),
    pytest.param("cuda", id="compiled", marks=[pytest.mark.triton, pytest.mark.gpu, pytest.mark.skipif(
        interpreting() or not torch.cuda.is_available(),
        reason="compiled Triton kernels need a CUDA device and a session without TRITON_INTERPRET=1")]),
]


def count_launches(monkeypatch) -> dict[str, int]:
    """Count calls of the Triton launchers behind the fused modules (each falls back to torch silently where
    Triton cannot run, so equal numbers alone would not show that the kernels ran)."""
    from longvila.kernels import fused_linear_ce, rmsnorm, rope

    counts: dict[str, int] = {}
    for module, name in ((rmsnorm, "_fwd"), (rope, "_launch"), (fused_linear_ce, "_ce_chunk_triton")):
        def spy(*args, _name=name, _real=getattr(module, name), **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return counts


@pytest.mark.parametrize("device", MODES)
def test_fused_model_matches_stock_loss_and_gradients(device, monkeypatch):
    stock, tokenizer, _ = load_vila(tiny_model_path())
    fused = copy.deepcopy(stock)
    report = enable_fused_kernels(fused)
    assert report.rms_norms == 2 * 2 + 1 and report.attentions == 2  # 2 layers x 2 norms + final; 2 attentions
    assert fused_kernels_active(fused) and not fused_kernels_active(stock)
    fused.to(device)  # the stock reference stays on CPU (HF RMSNorm and RoPE, the torch chunked CE)
    batch = packed_batch(len(tokenizer), seed=torch.seed() % 2**31)
    results = []
    for model, inputs in ((stock, batch), (fused, {k: v.to(device) for k, v in batch.items()})):
        launches = count_launches(monkeypatch) if model is fused else {}
        out = model(**inputs)
        out.loss_sum.backward()
        results.append((out, {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}))
    assert launches.pop("_ce_chunk_triton", 0) >= 1, "the chunked CE did not run its Triton kernel"
    assert launches == {"_fwd": 2 * 2 + 1, "_launch": 2 * 2}  # RMSNorm forwards; RoPE forward + backward per layer
    (ref, ref_grads), (got, got_grads) = results
    assert int(got.num_tokens) == int(ref.num_tokens)
    torch.testing.assert_close(got.loss_sum.cpu(), ref.loss_sum, rtol=1e-5, atol=1e-4)
    assert ref_grads.keys() == got_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_nothing_to_fuse_is_an_error():
    model, _, _ = load_vila(tiny_model_path())
    enable_fused_kernels(model)
    with pytest.raises(ValueError, match="found nothing to fuse"):
        enable_fused_kernels(model)
