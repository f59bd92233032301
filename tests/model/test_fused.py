"""--fused_kernels: the Triton RMSNorm / RoPE / chunked CE give the stock model's loss and grads (on CPU in the
interpreter session, ``TRITON_INTERPRET=1 pytest -m triton``)."""

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


@pytest.mark.triton
@pytest.mark.skipif(not interpreting(), reason="the model runs on CPU, where the fused modules use the Triton kernels "
                    "only in the interpreter session (TRITON_INTERPRET=1 pytest -m triton)")
def test_fused_model_matches_stock_loss_and_gradients():
    stock, tokenizer, _ = load_vila(tiny_model_path())
    fused = copy.deepcopy(stock)
    report = enable_fused_kernels(fused)
    assert report.rms_norms == 2 * 2 + 1 and report.attentions == 2  # 2 layers x 2 norms + final; 2 attentions
    assert fused_kernels_active(fused) and not fused_kernels_active(stock)
    batch = packed_batch(len(tokenizer), seed=torch.seed() % 2**31)
    results = []
    for model in (stock, fused):
        out = model(**batch)
        out.loss_sum.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (got, got_grads) = results
    assert int(got.num_tokens) == int(ref.num_tokens)
    torch.testing.assert_close(got.loss_sum, ref.loss_sum, rtol=1e-5, atol=1e-4)
    assert ref_grads.keys() == got_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_nothing_to_fuse_is_an_error():
    model, _, _ = load_vila(tiny_model_path())
    enable_fused_kernels(model)
    with pytest.raises(ValueError, match="found nothing to fuse"):
        enable_fused_kernels(model)
