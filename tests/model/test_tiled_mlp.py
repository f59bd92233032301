import pytest
import torch

from longvila.model.tiled_mlp import enable_tiled_mlp


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tile", [7, 16, 1000])
def test_tiled_mlp_equals_untiled(tiny, tile):
    """Odd tiles, exact tiles and one tile give the untiled outputs and gradients (float64, so only the algorithm
    is compared, not fp32 summation order); state-dict keys do not change."""
    model, _, _ = tiny
    llm = model.llm.double()
    ids = torch.randint(0, 500, (2, 45))
    keys = list(llm.state_dict())

    def run():
        llm.zero_grad(set_to_none=True)
        hidden = llm.model(input_ids=ids).last_hidden_state
        hidden.pow(2).sum().backward()
        return hidden.detach(), grads(llm)

    want_h, want_g = run()
    assert enable_tiled_mlp(llm, tile) == llm.config.num_hidden_layers
    got_h, got_g = run()
    assert list(llm.state_dict()) == keys
    assert torch.allclose(got_h, want_h, atol=1e-12)
    assert want_g.keys() == got_g.keys()
    for name in want_g:
        err = (got_g[name] - want_g[name]).abs().max() / want_g[name].abs().max()
        assert err < 1e-12, (name, float(err))


def test_tiles_bound_the_intermediate(tiny):
    """The MLP's widest tensor seen by autograd is one tile long, not the whole sequence."""
    model, _, _ = tiny
    llm = model.llm.float()
    enable_tiled_mlp(llm, 8)
    widths = []
    mlp = llm.model.layers[0].mlp
    handle = mlp.act_fn.register_forward_hook(lambda m, i, o: widths.append(o.shape[-2]))
    try:
        llm.model(input_ids=torch.randint(0, 500, (1, 40))).last_hidden_state.sum().backward()
    finally:
        handle.remove()
    assert widths and max(widths) == 8


def test_no_mlp_is_an_error():
    with pytest.raises(ValueError, match="no gate/up/down MLP"):
        enable_tiled_mlp(torch.nn.Linear(2, 2))
