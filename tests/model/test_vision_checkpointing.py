"""The SigLIP tower under gradient checkpointing, at SigLIP-so400m layer shapes (1152 wide, 16 heads, 4304-wide
MLP, 384 px / 14 px = 729 patches per frame), with 3 layers so that it runs on a CPU in seconds.

What the backward keeps is counted with ``saved_tensors_hooks``: non-reentrant checkpointing installs its own hooks
inside each checkpointed layer, so the outer hook sees only what lives outside them. Checkpointed, that is each
layer's input (frames x 729 x 1152); plain, it is every attention score, MLP intermediate and norm output.
"""

import pytest
import torch

from longvila.model.real_shapes import vision_config
from longvila.model.vlm import vision_features

PATCHES, WIDTH, LAYERS = 729, 1152, 3


def saved_elements(tower, pixels, select_layer=-2):
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = vision_features(tower, pixels, select_layer)
    return out, sum(saved)


@pytest.fixture(scope="module")
def tower():
    from transformers import SiglipVisionModel

    torch.manual_seed(0)
    return SiglipVisionModel(vision_config("siglip-so400m", LAYERS)).train()


def test_checkpointed_tower_keeps_only_layer_inputs_and_same_grads(tower):
    frames = 2
    pixels = torch.randn(frames, 3, 384, 384)
    tower.gradient_checkpointing_disable()
    plain, plain_saved = saved_elements(tower, pixels)
    plain.square().mean().backward()
    plain_grads = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad(set_to_none=True)

    tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        ckpt, ckpt_saved = saved_elements(tower, pixels)
        ckpt.square().mean().backward()
    finally:
        tower.gradient_checkpointing_disable()

    assert ckpt.shape == (frames, PATCHES, WIDTH)
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=0)
    layer_inputs = (LAYERS - 1) * frames * PATCHES * WIDTH  # select_layer -2 runs LAYERS - 1 layers
    # the patch embedding's own saved input (the pixels) and conv output sit outside the layers
    outside = pixels.numel() + frames * PATCHES * WIDTH * 2
    assert layer_inputs <= ckpt_saved <= layer_inputs + outside, (ckpt_saved, layer_inputs, outside)
    assert plain_saved > 10 * ckpt_saved  # the attention scores alone are 16 x 729 x 729 per frame and layer
    for name, grad in plain_grads.items():
        torch.testing.assert_close(dict(tower.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
