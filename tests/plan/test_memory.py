"""The memory model's terms move the way the trainer's memory does (the measured accuracy is test_accuracy.py)."""

import pytest

from longvila.plan.hardware import resolve_device
from longvila.plan.layout import Layout
from longvila.plan.memory import predict_memory
from longvila.plan.model_shape import resolve_model_shape
from longvila.plan.workload import TrainingChoices, Workload

H100 = resolve_device("H100-80GB")


@pytest.fixture(scope="module")
def qwen7b():
    return resolve_model_shape("qwen2-7b")


def test_peak_is_the_larger_phase_and_sp_divides_activations(qwen7b):
    choices = TrainingChoices()
    one = predict_memory(qwen7b, Layout(8, 8, 1), Workload(65536), choices, H100)
    eight = predict_memory(qwen7b, Layout(8, 8, 8, 8), Workload(65536), choices, H100)
    assert one.peak_gib == max(one.backward_gib, one.step_gib)
    assert eight.checkpointed_activations_gib == pytest.approx(one.checkpointed_activations_gib / 8, rel=0.01)
    assert eight.weights_gib == one.weights_gib  # ZeRO-2 keeps full bf16 weights on every rank
    assert eight.optimizer_state_gib == one.optimizer_state_gib == pytest.approx(12 * 7.6e9 / 8 / 2**30, rel=0.1)


def test_zero3_and_offload_move_state_off_the_gpu(qwen7b):
    layout, work = Layout(8, 8, 8, 8), Workload(262144)
    zero2 = predict_memory(qwen7b, layout, work, TrainingChoices(deepspeed="zero2"), H100)
    zero3 = predict_memory(qwen7b, layout, work, TrainingChoices(deepspeed="zero3"), H100)
    offload = predict_memory(qwen7b, layout, work, TrainingChoices(deepspeed="zero3_offload",
                                                                   checkpointing="offload"), H100)
    assert zero3.weights_gib < zero2.weights_gib / 2
    assert offload.optimizer_state_gib == 0 and offload.optimizer_step_gib == 0
    assert offload.weights_gib < zero3.weights_gib
    assert offload.checkpointed_activations_gib < zero3.checkpointed_activations_gib / 5
    assert offload.host_offload_gib > zero3.optimizer_state_gib + zero3.weights_gib - offload.weights_gib


def test_kv_replication_costs_memory():
    shape = resolve_model_shape("llama3-8b", num_layers=2)  # 32 q / 8 kv heads
    four = predict_memory(shape, Layout(8, 8, 8, 1), Workload(65536), TrainingChoices(), H100)
    replicated = predict_memory(shape, Layout(16, 8, 16, 1), Workload(131072), TrainingChoices(), H100)
    # Same local tokens; at ulysses 16 each of the 8 kv heads is copied twice, so kv buffers double.
    assert replicated.communication_gib > four.communication_gib
    assert replicated.checkpointed_activations_gib == pytest.approx(four.checkpointed_activations_gib)


def test_the_naive_loss_grows_with_the_vocabulary_and_tiling_caps_the_mlp():
    shape = resolve_model_shape("qwen2-1.5b", num_layers=2)
    naive = predict_memory(shape, Layout(1, 1), Workload(32768), TrainingChoices(loss_impl="naive"), H100)
    chunked = predict_memory(shape, Layout(1, 1), Workload(32768), TrainingChoices(), H100)
    assert naive.loss_gib > 10 * chunked.loss_gib
    untiled = predict_memory(shape, Layout(1, 1), Workload(32768), TrainingChoices(tiled_mlp_tokens=0), H100)
    assert untiled.layer_transient_gib > chunked.layer_transient_gib + 32768 * 8960 * 2 * 3 / 2**30
