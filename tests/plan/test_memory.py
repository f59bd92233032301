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


VIDEO = "s5_long_video_sft"  # trains the tower, the projector and the LLM
OLD_MMSP = {"mmsp": "gather", "vision_chunk_frames": 0}  # before issue 21: gathered features, per-layer checkpoints
GiB = 2**30


@pytest.fixture(scope="module")
def video_shape():
    # The video terms do not depend on the LLM's depth; two layers keep the meta-device build quick.
    return resolve_model_shape("qwen2-7b", trains=frozenset({"vision_tower", "mm_projector", "llm"}), num_layers=2)


def _video(shape, frames, sp, **choices):
    work = Workload.from_frames(frames, shape.tokens_per_frame)
    return predict_memory(shape, Layout(sp, 8, sp, sp), work, TrainingChoices(stage=VIDEO, **choices), H100)


def _own_gradient_gib(shape, frames, sp):
    """The rank's frames' feature rows (bf16): their gradient is part of the tower's backward."""
    return -(-frames // sp) * shape.tokens_per_frame * shape.hidden_size * 2 / GiB


def test_route_has_no_replicated_video_term_and_gather_does(video_shape):
    """Route: doubling SP halves the pixels and the features' gradients (nothing on a rank is a copy of another
    rank's), and the chunked tower stays one chunk. Gather: every rank holds the whole sequence's gradient, every
    frame's gathered features' gradient and every frame's pixels (twice: the batch and the encoder's cat), whatever
    the SP degree."""
    shape = video_shape
    four, eight = _video(shape, 2048, 4), _video(shape, 2048, 8)
    assert eight.video_pixels_gib == pytest.approx(four.video_pixels_gib / 2)
    assert eight.video_features_gib == pytest.approx(four.video_features_gib / 2, rel=1e-3)
    assert eight.vision_tower_gib == four.vision_tower_gib == 0  # each chunk keeps only its input (the pixels)
    assert four.vision_transient_gib - eight.vision_transient_gib == pytest.approx(
        _own_gradient_gib(shape, 2048, 8))  # one chunk's recompute either way; only the rank's own rows halve
    old_four, old_eight = _video(shape, 2048, 4, **OLD_MMSP), _video(shape, 2048, 8, **OLD_MMSP)
    work = Workload.from_frames(2048, shape.tokens_per_frame)
    replicated = (work.tokens + 2048 * shape.tokens_per_frame) * shape.hidden_size * 2 / GiB
    assert old_eight.video_features_gib == pytest.approx(replicated + _own_gradient_gib(shape, 2048, 8))
    assert old_eight.video_features_gib > 0.85 * old_four.video_features_gib > 4 * eight.video_features_gib
    assert old_eight.video_pixels_gib == old_four.video_pixels_gib == pytest.approx(2 * 2048 * 3 * 384**2 * 2 / GiB)
    assert eight.video_pixels_gib == pytest.approx(256 * 3 * 384**2 * 2 / GiB)  # the batch is the tower's input
    # The old path's tower keeps a per-layer checkpoint of every frame of the rank (26 layers run at select layer
    # -2): ~44 MB per frame, and the projector's saved tensors beside it.
    assert old_eight.vision_tower_gib > 256 * 26 * 729 * 1152 * 2 / GiB > 10
    assert old_eight.peak_gib > eight.peak_gib + 10


def test_video_terms_fall_in_their_phases(video_shape):
    """The pixels (and an unchunked tower's checkpoints) are made in the forward and held until the tower's
    backward: they add to the LLM's backward and to the vision backward. Nothing saves the features, so they and
    the tower's recompute add only to the vision backward, after the LLM's layers have freed their activations."""
    from dataclasses import replace

    route = _video(video_shape, 2048, 8)
    assert route.video_pixels_gib > 0 and route.video_features_gib > 0 and route.vision_transient_gib > 0
    for phase in ("backward_gib", "vision_backward_gib"):
        assert getattr(replace(route, video_pixels_gib=0), phase) == pytest.approx(
            getattr(route, phase) - route.video_pixels_gib)
    assert replace(route, video_features_gib=0, vision_transient_gib=0).backward_gib == route.backward_gib
    assert route.vision_backward_gib == pytest.approx(
        route.persistent_gib + route.video_pixels_gib + route.layer_gradients_gib + route.head_gradient_gib
        + max(route.video_features_gib, route.vision_transient_gib))
    assert replace(route, video_pixels_gib=0, video_features_gib=0).step_gib == route.step_gib
    old = _video(video_shape, 2048, 8, **OLD_MMSP)
    assert replace(old, vision_tower_gib=0).backward_gib == pytest.approx(old.backward_gib - old.vision_tower_gib)
    # Short videos on this two-layer LLM with 8-frame chunks: the chunk's recompute (26 layers' activations for 8
    # frames) is larger than the LLM's backward.
    assert _video(video_shape, 256, 8, vision_chunk_frames=8).peak_phase == "vision backward"
    text = predict_memory(video_shape, Layout(8, 8, 8, 8), Workload(65536), TrainingChoices(stage=VIDEO), H100)
    assert text.video_pixels_gib == text.video_features_gib == text.vision_tower_gib == 0
    assert text.vision_transient_gib == text.vision_backward_gib == 0
    assert text.peak_gib == max(text.backward_gib, text.step_gib)


def test_the_chunked_tower_does_not_grow_with_frames(video_shape):
    """Route: growing the video adds pixels and features only; the tower's recompute is one chunk (smaller chunks,
    less) plus the rank's own rows. Gather, and route with ``--vision_chunk_frames 0``, keep checkpoints that grow
    with every frame of the rank."""
    short, long = _video(video_shape, 256, 8), _video(video_shape, 4096, 8)
    assert long.vision_tower_gib == short.vision_tower_gib == 0
    assert long.vision_transient_gib - short.vision_transient_gib == pytest.approx(
        _own_gradient_gib(video_shape, 4096, 8) - _own_gradient_gib(video_shape, 256, 8))
    assert long.video_pixels_gib == pytest.approx(16 * short.video_pixels_gib)
    growth = long.backward_gib - short.backward_gib
    assert long.video_pixels_gib - short.video_pixels_gib < growth / 4  # the rest is the LLM's activations
    one, eight = (_video(video_shape, 4096, 8, vision_chunk_frames=k) for k in (1, 8))
    own = _own_gradient_gib(video_shape, 4096, 8)
    assert one.vision_transient_gib - own == pytest.approx((eight.vision_transient_gib - own) / 8)
    unchunked = _video(video_shape, 4096, 8, vision_chunk_frames=0)
    old = _video(video_shape, 4096, 8, **OLD_MMSP)
    assert unchunked.vision_tower_gib == old.vision_tower_gib > 0
    assert old.vision_tower_gib == pytest.approx(16 * _video(video_shape, 256, 8, **OLD_MMSP).vision_tower_gib)
    # The trainer chunks the tower on either MM-SP path.
    chunked_gather = _video(video_shape, 4096, 8, mmsp="gather")
    assert chunked_gather.vision_tower_gib == 0
    assert chunked_gather.vision_transient_gib == long.vision_transient_gib
    # A chunk larger than the rank's share is the share.
    assert _video(video_shape, 16, 8, vision_chunk_frames=64).vision_transient_gib == pytest.approx(
        _video(video_shape, 16, 8, vision_chunk_frames=2).vision_transient_gib)


def test_a_frozen_tower_keeps_nothing():
    shape = resolve_model_shape("qwen2-7b", num_layers=2)  # stage 4 trains the LLM only
    work = Workload.from_frames(2048, shape.tokens_per_frame)
    route = predict_memory(shape, Layout(8, 8, 8, 8), work, TrainingChoices(stage="s4_context_ext"), H100)
    trained = predict_memory(shape, Layout(8, 8, 8, 8), work, TrainingChoices(stage=VIDEO), H100)
    assert route.vision_tower_gib == 0
    assert 0 < route.vision_transient_gib < trained.vision_transient_gib / 20
    assert route.vision_transient_gib == predict_memory(shape, Layout(8, 8, 8, 8), Workload.from_frames(
        4096, shape.tokens_per_frame), TrainingChoices(stage="s4_context_ext"), H100).vision_transient_gib


def test_at_sp_1_the_two_paths_hold_the_same_but_gathers_cat(video_shape):
    route, gather = _video(video_shape, 64, 1), _video(video_shape, 64, 1, mmsp="gather")
    assert route.video_features_gib == gather.video_features_gib > 0
    assert route.vision_transient_gib == gather.vision_transient_gib > 0
    # Every frame is the rank's either way; build_sequence still concatenates the batch's frames into a second copy.
    assert gather.video_pixels_gib == pytest.approx(2 * route.video_pixels_gib)


def test_dummy_frames_cost_a_concatenated_copy(video_shape):
    """2049 frames over SP 8: the last rank pads its share with dummy frames, concatenated onto its real ones."""
    exact, padded = _video(video_shape, 2048, 8), _video(video_shape, 2049, 8)
    per_frame = 3 * 384**2 * 2 / GiB
    assert exact.video_pixels_gib == pytest.approx(256 * per_frame)
    assert padded.video_pixels_gib == pytest.approx(2 * 257 * per_frame)
    old = _video(video_shape, 2049, 8, **OLD_MMSP)
    assert old.video_pixels_gib == pytest.approx((2 * 2049 + 257) * per_frame)


def test_the_tower_runs_only_the_layers_before_the_selected_state():
    """VILA reads hidden state -2: SigLIP-so400m runs 26 of its 27 layers, and a one-layer probe none (its
    selected state is the patch embeddings' output). The unchunked path then keeps only the projector's saved
    tensors: for mlp_downsample, LayerNorm(4C) in and out and the GELU's in and out, 196 tokens per frame."""
    from longvila.plan.memory import projector_saved_elements

    assert resolve_model_shape("qwen2-7b", num_layers=2).vision_layers_run == 26
    probe = resolve_model_shape("qwen2-0.5b", trains=frozenset({"vision_tower", "mm_projector", "llm"}),
                                num_layers=1, vision_layers=1)
    assert probe.vision_layers_run == 0
    assert projector_saved_elements(probe) == 196 * (2 * 4 * 1152 + 2 * 896)
    old = predict_memory(probe, Layout(1, 1), Workload.from_frames(64, 196),
                         TrainingChoices(stage=VIDEO, bf16=False, **OLD_MMSP), H100)
    assert old.vision_tower_gib == pytest.approx(64 * projector_saved_elements(probe) * 4 / GiB)


@pytest.mark.parametrize("bad", [{"mmsp": "scatter"}, {"vision_chunk_frames": -1}])
def test_video_choices_are_checked(bad):
    with pytest.raises(ValueError, match="mmsp_impl|vision_chunk_frames"):
        TrainingChoices(**bad)
