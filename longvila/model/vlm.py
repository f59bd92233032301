"""VILAModel: SigLIP vision tower + projector + causal LM, trained on expanded media sequences.

The forward pass is a fixed pipeline with three swappable hooks, so sequence parallelism and fused kernels plug in
without subclassing:
    build_layout (media expansion as integers: token ids and feature rows) -> shift_labels (global, once)
    -> ``sequence_sharder`` (identity; SP takes its shard and plans where each frame feature goes)
    -> embed the rank's positions: text ids through the embedding, its share of the frames through
       ``frame_encoder`` (in chunks of ``vision_chunk_frames``, recomputed in the backward) and their features
       routed to their positions -> LLM backbone ("longvila" attention) -> ``loss_fn`` (sum, count).

No floating-point tensor with the whole sequence's length exists on a sequence-parallel rank, and each rank touches
only its own frames' pixels. ``build_sequence`` (the whole embedded sequence at once) serves generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from longvila.constants import IGNORE_INDEX, IMAGE_TOKEN
from longvila.data.template import video_token_id
from longvila.model.loss import LossOutput, chunked_cross_entropy_sum, shift_labels
from longvila.model.media_expansion import check_frame_counts, check_media, layout_row, right_pad, right_pad_rows
from longvila.model.tokenizer import newline_token_id, single_token_id

DEFAULT_VILA_CONFIG = {
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "cls_patch",
    "num_video_frames": 8,
    "fps": 0.0,
    "image_aspect_ratio": "resize",
    # VILA stores a template *name* here (llava/model/language_model/chat_templates/<name>.jinja); the jinja text
    # itself travels with the tokenizer in llm/.
    "chat_template": "qwen2",
    "tune_language_model": True,
    "tune_vision_tower": True,
    "tune_mm_projector": True,
}


@dataclass(frozen=True)
class MediaTokenIds:
    """Token ids the model needs: media placeholders and the per-frame newline."""

    image: int
    video: int
    newline: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "MediaTokenIds":
        image, video = single_token_id(tokenizer, IMAGE_TOKEN), video_token_id(tokenizer)
        return cls(image, video, newline_token_id(tokenizer))


@dataclass
class SequenceInputs:
    """The LLM's view of a batch after media expansion and right padding (all (B, S[, H]))."""

    inputs_embeds: torch.Tensor | None  # None while a text-only sequence is still token ids (``token_ids``)
    labels: torch.Tensor  # UNSHIFTED from build_sequence; forward replaces them with shifted ones
    position_ids: torch.Tensor  # per-document positions; padding restarts at 0 (its own document)
    attention_mask: torch.Tensor  # bool, True on real tokens
    segment_ids: torch.Tensor | None = None  # document ids of the GLOBAL sequence, set by a sequence sharder
    token_ids: torch.Tensor | None = None  # ids, embedded only after sharding (see forward); 0 on media positions
    feature_rows: torch.Tensor | None = None  # frame-feature row each position holds (-1: a token), see layout_row
    num_frames: int = 0  # frames of the whole batch (feature rows count frame * tokens_per_frame + token)
    media_routes: object = None  # a sharder's RoutePlan for this rank (longvila/distributed/media_routing.py)


ATTN_IMPLEMENTATION = "longvila"
"""The name of the default (one device, torch) attention in transformers' registry; a model given another layout
registers its dispatcher under a name of its own (:meth:`VILAModel.set_attention`)."""


def use_longvila_attention(llm: nn.Module) -> None:
    """Switch the LLM to the default "longvila" attention at runtime (never saved: transformers does not
    serialise it)."""
    from transformers import AttentionInterface

    from longvila.distributed.attention import AttentionDispatcher

    # The default layout (no SP, torch backend): registering again swaps in an equivalent dispatcher.
    AttentionInterface.register(ATTN_IMPLEMENTATION, AttentionDispatcher())
    llm.config._attn_implementation = ATTN_IMPLEMENTATION


def _identity(seq: SequenceInputs) -> SequenceInputs:
    return seq


DEFAULT_VISION_CHUNK_FRAMES = 2
"""Frames the vision tower encodes at once when training: the backward recomputes the whole tower per chunk, so
saved tower activations are one chunk's whatever the frame count (the tower is ~2% of a long-video step's FLOPs).
A chunk's recompute holds every tower layer's activations for its frames (counted from the layer's code, see
``longvila/plan/memory.py``): about 0.7 GB per frame for the 26 SigLIP-so400m layers VILA runs, in bf16, so a
2-frame chunk (1,458 patches per matmul) keeps the tower near 1.4 GB where 8 frames would need 5.4 GB."""


class VILAModel(nn.Module):
    """Vision tower + projector + LLM with VILA's media expansion; see module docstring for the pipeline."""

    def __init__(
        self,
        llm: nn.Module,
        vision_tower: nn.Module,
        mm_projector: nn.Module,
        tokenizer_ids: MediaTokenIds,
        config: dict | None = None,
    ):
        super().__init__()
        self.llm = llm
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.tokenizer_ids = tokenizer_ids
        self.config = {**DEFAULT_VILA_CONFIG, **(config or {})}
        feature = self.config["mm_vision_select_feature"]
        if feature != "cls_patch":
            raise ValueError(f"mm_vision_select_feature {feature!r} unsupported; SigLIP towers need 'cls_patch'")
        use_longvila_attention(llm)
        self.frame_encoder: Callable[[torch.Tensor], torch.Tensor] = self.encode_frames
        self.sequence_sharder: Callable[[SequenceInputs], SequenceInputs] = _identity
        self.loss_fn: Callable = chunked_cross_entropy_sum
        self.vision_chunk_frames = DEFAULT_VISION_CHUNK_FRAMES  # 0: one tower call, per-layer checkpoints kept

    def set_attention(self, dispatcher: Callable) -> str:
        """Give the LLM ``dispatcher`` (transformers' attention-function signature, e.g. an
        ``AttentionDispatcher`` for a parallel layout), registered under this model's own name; returns it."""
        if not callable(dispatcher):
            raise ValueError(f"attention dispatcher must be callable, got {type(dispatcher).__name__}")
        from transformers import AttentionInterface

        name = f"{ATTN_IMPLEMENTATION}-{id(self):x}"
        AttentionInterface.register(name, dispatcher)
        self.llm.config._attn_implementation = name
        return name

    # ---------------------------------------------------------------- media
    @property
    def tokens_per_frame(self) -> int:
        vcfg = self.vision_tower.config
        return self.mm_projector.tokens_per_frame((vcfg.image_size // vcfg.patch_size) ** 2)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) processed pixels -> (N, T, H_llm): SigLIP hidden_states[select_layer], all tokens, projected.

        With ``vision_chunk_frames`` the frames go through in chunks; while training, each chunk keeps only its
        pixels and the backward recomputes the whole tower and projector for it. A frozen tower runs without a
        graph either way.
        """
        if frames.dim() != 4:
            raise ValueError(f"frames must be (N, 3, H, W), got shape {tuple(frames.shape)}")
        if not self.vision_chunk_frames:
            return self._encode_chunk(frames)
        encode = self._encode_chunk
        if torch.is_grad_enabled() and any(p.requires_grad for part in (self.vision_tower, self.mm_projector)
                                           for p in part.parameters()):
            from torch.utils.checkpoint import checkpoint

            encode = partial(checkpoint, self._encode_chunk, use_reentrant=False)
        features = [encode(part) for part in frames.split(self.vision_chunk_frames)]
        return features[0] if len(features) == 1 else torch.cat(features)

    def _encode_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        vt_param = next(self.vision_tower.parameters())
        frozen = not any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            feats = vision_features(
                self.vision_tower, frames.to(vt_param.device, vt_param.dtype), self.config["mm_vision_select_layer"]
            )
        proj_dtype = next(self.mm_projector.parameters()).dtype
        return self.mm_projector(feats.to(proj_dtype))

    def rank_frames(self, media: list[list[torch.Tensor]] | None, frames: torch.Tensor | None,
                    split) -> torch.Tensor:
        """This rank's frames ``[split.start, split.stop)`` of the batch (frames in text order), on the device,
        then ``split.num_dummy`` zero frames so every SP rank runs the same tower shapes.

        ``frames`` given: the loader already decoded only this rank's frames, as one tensor (used as it is when no
        dummy is needed); otherwise ``media`` holds whole media and only the rank's slices are moved. The dtype is
        the frame encoder's business (V-NIAH's cached features are looked up by frame numbers that bf16 would
        round).
        """
        device = next(self.vision_tower.parameters()).device
        if frames is None:
            pieces, offset = [], 0
            for medium in (m for sample in media for m in sample):
                lo, hi = max(split.start - offset, 0), min(split.stop - offset, medium.shape[0])
                if lo < hi:
                    pieces.append(medium[lo:hi].to(device))
                offset += medium.shape[0]
        else:
            pieces = [frames.to(device)] if frames.shape[0] else []
        real = sum(p.shape[0] for p in pieces)
        if real != split.num_real:
            raise ValueError(f"this rank should encode {split.num_real} frames of {split.num_frames}, the batch "
                             f"holds {real}")
        size = self.vision_tower.config.image_size
        frame_shape, dtype = (pieces[0].shape[1:], pieces[0].dtype) if pieces else ((3, size, size), torch.float32)
        if split.num_dummy:
            pieces.append(torch.zeros((split.num_dummy, *frame_shape), dtype=dtype, device=device))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    # ---------------------------------------------------------------- sequence
    def build_sequence(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None,
                       media: list[list[torch.Tensor]] | None = None,
                       position_ids: torch.Tensor | None = None) -> SequenceInputs:
        """The whole expanded, right-padded sequence embedded on this process (generation and full logits): the
        training layout (:meth:`build_layout`) with every position embedded, all frames of the batch in ONE
        ``frame_encoder`` call."""
        seq = self.build_layout(input_ids, labels, attention_mask, media, position_ids)
        return replace(seq, inputs_embeds=self.embed_positions(seq, media), token_ids=None, feature_rows=None)

    def build_layout(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None,
                     media: list[list[torch.Tensor]] | None, position_ids: torch.Tensor | None = None,
                     media_frames: list[list[int]] | None = None) -> SequenceInputs:
        """The expanded, right-padded sequence of ``build_sequence`` as integers only: token ids, the feature row of
        every media position, labels, positions. Nothing here grows with the hidden size."""
        ids = self.tokenizer_ids
        if media_frames is None:
            attention_mask, media, _ = check_media(input_ids, labels, attention_mask, media, position_ids, ids.image,
                                                   ids.video)
            media_frames = [[m.shape[0] for m in sample] for sample in media]
        else:
            attention_mask = check_frame_counts(input_ids, attention_mask, media_frames, ids)
        rows, first = [], 0
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].nonzero().squeeze(1)
            rows.append(layout_row(input_ids[b, keep], labels[b, keep],
                                   position_ids[b, keep] if position_ids is not None else None, media_frames[b],
                                   first, self.tokens_per_frame, ids))
            first += sum(media_frames[b])
        token_ids, feature_rows, labels_rows, position_rows = (list(column) for column in zip(*rows))
        ids_padded, labels, positions, mask = right_pad(token_ids, labels_rows, position_rows)
        return SequenceInputs(None, labels, positions, mask, token_ids=ids_padded,
                              feature_rows=right_pad_rows(feature_rows, -1), num_frames=first)

    def embed_positions(self, seq: SequenceInputs, media, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S_local, H) embeddings of this rank's positions: token ids through the embedding table, and the
        features of the frames this rank encodes routed to whichever rank holds their positions (written into the
        embedding's output in place: its backward needs only the ids, so no second copy of the shard is made)."""
        from longvila.distributed.media_routing import plan_local, route_features

        embeds = self.llm.get_input_embeddings()(seq.token_ids)
        if seq.feature_rows is None or not seq.num_frames:
            return embeds
        routes = seq.media_routes or plan_local(seq.feature_rows, seq.num_frames)
        features = self.frame_encoder(self.rank_frames(media, frames, routes.frames))[:routes.frames.num_real]
        rows = route_features(features.reshape(-1, features.shape[-1]).to(embeds.dtype), routes)
        embeds.view(-1, embeds.shape[-1]).index_put_((routes.recv_positions.to(embeds.device),), rows)
        return embeds

    def build_text_sequence(
        self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
    ) -> SequenceInputs:
        """A text-only batch as the sequence ``build_sequence`` would give, but still as token ids.

        Embedding after sequence sharding means each SP rank embeds (and holds the gradient of) only its own
        S/SP x H rows instead of the whole S x H sequence.
        """
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(torch.bool))
        rows_i, rows_l, rows_p = [], [], []
        for b in range(input_ids.shape[0]):
            keep = mask[b].nonzero().squeeze(1)
            rows_i.append(input_ids[b, keep])
            rows_l.append(labels[b, keep])
            rows_p.append(position_ids[b, keep] if position_ids is not None
                          else torch.arange(keep.numel(), device=input_ids.device))
        ids, labels, positions, mask = right_pad(rows_i, rows_l, rows_p)
        return SequenceInputs(None, labels, positions, mask, token_ids=ids)

    def _is_text_only(self, input_ids, attention_mask, media) -> bool:
        if media is not None and any(len(m) for m in media):
            return False
        ids = self.tokenizer_ids
        placeholders = (input_ids == ids.image) | (input_ids == ids.video)
        if attention_mask is not None:
            placeholders &= attention_mask.to(torch.bool)
        return not bool(placeholders.any())  # placeholders without media: build_sequence reports it

    # ---------------------------------------------------------------- LLM
    def run_backbone(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
        past_key_values=None,
    ) -> torch.Tensor:
        """Decoder stack without lm_head. No HF mask: documents come from position_ids in the attention, or from
        ``segment_ids`` when the sequence is sharded (local positions cannot show where documents start).

        ``past_key_values`` (an HF cache, single unsharded sequence) makes the call extend that cache: greedy
        decoding runs the prompt once and then one token per call (:mod:`longvila.eval.decode`).
        """
        decoder = self.llm.get_decoder()
        layer_types = getattr(self.llm.config, "layer_types", None) or ["full_attention"]
        extra = {} if segment_ids is None else {"segment_ids": segment_ids}
        if past_key_values is not None:
            extra["past_key_values"] = past_key_values
        out = decoder(
            inputs_embeds=inputs_embeds,
            attention_mask={t: None for t in layer_types},
            position_ids=position_ids,
            use_cache=past_key_values is not None,
            **extra,
        )
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None,
        media: list[list[torch.Tensor]] | None = None,
        position_ids: torch.Tensor | None = None,
        media_frames: list[list[int]] | None = None,
        frames: torch.Tensor | None = None,
        **_,
    ) -> LossOutput:
        """``media``: per sample, each medium's (T, 3, H, W) pixels; or, from a loader that decoded only this
        rank's share, ``media_frames`` (every medium's frame count) and ``frames`` (this rank's pixels)."""
        if self._is_text_only(input_ids, attention_mask, media):
            seq = self.build_text_sequence(input_ids, labels, attention_mask, position_ids)
        else:
            seq = self.build_layout(input_ids, labels, attention_mask, media, position_ids, media_frames)
        seq = replace(seq, labels=shift_labels(seq.labels, seq.position_ids))
        seq = self.sequence_sharder(seq)
        if seq.inputs_embeds is None:
            seq = replace(seq, inputs_embeds=self.embed_positions(seq, media, frames), token_ids=None,
                          feature_rows=None, media_routes=None)
        hidden = self.run_backbone(seq.inputs_embeds, seq.position_ids, seq.segment_ids)
        loss_sum, num_tokens = self.loss_fn(hidden, self.llm.get_output_embeddings().weight, seq.labels)
        return LossOutput(loss_sum, num_tokens, seq.attention_mask.sum())

    def logits(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        media: list[list[torch.Tensor]] | None = None,
        position_ids: torch.Tensor | None = None,
        **_,
    ) -> torch.Tensor:
        """(B, S, V) logits over the expanded, right-padded sequence (unshifted: logits[t] predicts token t+1)."""
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)
        seq = self.build_sequence(input_ids, labels, attention_mask, media, position_ids)
        hidden = self.run_backbone(seq.inputs_embeds, seq.position_ids)
        return self.llm.get_output_embeddings()(hidden)

    def zero3_external_parameters(self) -> list[nn.Parameter]:
        """Weights used outside their own module's forward (the loss reads lm_head.weight directly), which
        ZeRO-3 must be told about or it never gathers them."""
        return [self.llm.get_output_embeddings().weight]

    # ---------------------------------------------------------------- training switches
    def set_trainable(self, vision_tower: bool, mm_projector: bool, llm: bool) -> None:
        """Freeze/unfreeze whole parts (stage recipes); mirrored into the config's tune_* flags."""
        self.vision_tower.requires_grad_(vision_tower)
        self.mm_projector.requires_grad_(mm_projector)
        self.llm.requires_grad_(llm)
        self.config.update(
            tune_vision_tower=bool(vision_tower), tune_mm_projector=bool(mm_projector), tune_language_model=bool(llm)
        )

    def enable_gradient_checkpointing(self) -> None:
        """Non-reentrant activation checkpointing on every decoder layer, and on every SigLIP encoder layer unless
        the tower already recomputes whole chunks of frames (``vision_chunk_frames``: checkpointing its layers too
        would run the tower a third time for nothing)."""
        for part in (self.llm,) if self.vision_chunk_frames else (self.llm, self.vision_tower):
            base = part.get_base_model() if hasattr(part, "get_base_model") else part
            kwargs = {"use_reentrant": False}
            if hasattr(base, "activation_checkpointing_enable"):
                base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def vision_features(tower: nn.Module, pixel_values: torch.Tensor, select_layer: int) -> torch.Tensor:
    """``hidden_states[select_layer]`` of a SigLIP tower, running only the layers needed.

    Equal to ``tower(pixel_values, output_hidden_states=True).hidden_states[select_layer]`` but it skips the
    layers after the selected one and never holds every layer's output at once (with hundreds of frames and a
    frozen tower that tuple alone is several GB). Unknown tower layouts fall back to the HF call.
    """
    base = tower.get_base_model() if hasattr(tower, "get_base_model") else tower  # peft (LoRA) wrapper
    core = getattr(base, "vision_model", base)  # transformers 4.x nests the transformer one level deeper
    embeddings, encoder = getattr(core, "embeddings", None), getattr(core, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if embeddings is None or layers is None:
        return tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[select_layer]
    num_states = len(layers) + 1  # embeddings output + one per layer
    index = select_layer + num_states if select_layer < 0 else select_layer
    if not 0 <= index < num_states:
        raise ValueError(f"mm_vision_select_layer {select_layer} out of range for {len(layers)} layers")
    hidden = embeddings(pixel_values)
    for layer in layers[:index]:
        out = layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden
