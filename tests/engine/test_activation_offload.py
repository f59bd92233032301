import pytest
import torch

from longvila.config import parse_stage_args
from longvila.errors import ConfigError
from longvila.engine.activation_offload import checkpointing_mode, offload_context


@pytest.mark.parametrize("value, mode", [(True, "true"), (False, "false"), ("offload", "offload"), ("TRUE", "true"),
                                         ("1", "true"), ("no", "false")])
def test_checkpointing_modes(value, mode):
    assert checkpointing_mode(value) == mode


def test_flag_forms(tmp_path):
    out = ["--output_dir", str(tmp_path)]
    assert parse_stage_args("s3_sft", out + ["--gradient_checkpointing"]).train.gradient_checkpointing == "true"
    assert parse_stage_args("s3_sft", out + ["--gradient_checkpointing", "offload"]).train.gradient_checkpointing \
        == "offload"
    with pytest.raises(ConfigError, match="--gradient_checkpointing must be one of false, true, offload"):
        parse_stage_args("s3_sft", out + ["--gradient_checkpointing", "sometimes"])


def test_offload_path_runs_and_changes_nothing():
    """On CPU DeepSpeed marks the checkpointed layer inputs but keeps them in place: same loss, same grads."""
    from longvila.model.checkpoint import load_vila
    from longvila.model.tiny import tiny_model_path

    model, tok, _ = load_vila(tiny_model_path())
    model.train()
    model.enable_gradient_checkpointing()
    ids = torch.randint(max(tok.added_tokens_decoder) + 1, 500, (1, 64))  # no special or media token
    labels = ids.clone()

    def step(offload):
        model.zero_grad(set_to_none=True)
        context = offload_context(offload)
        with context:
            out = model(ids, labels, torch.ones_like(ids, dtype=torch.bool))
            out.loss_sum.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.loss_sum.detach(), grads, context

    loss, grads, _ = step(False)
    loss_off, grads_off, context = step(True)
    assert context.stats.marked_tensors >= model.llm.config.num_hidden_layers  # the offload hooks really ran
    assert torch.equal(loss, loss_off)
    for name in grads:
        assert torch.equal(grads[name], grads_off[name]), name
