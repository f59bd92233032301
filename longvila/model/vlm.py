"""VILAModel: SigLIP vision tower + projector + causal LM, trained on expanded media sequences.

The forward pass is a fixed pipeline with three swappable hooks, so sequence parallelism and fused kernels plug in
without subclassing:
    build_sequence (media expansion, uses ``frame_encoder``) -> shift_labels (global, once)
    -> ``sequence_sharder`` (identity; SP takes its shard) -> LLM backbone ("longvila" attention)
    -> ``loss_fn`` (sum, count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from longvila.constants import IGNORE_INDEX, IMAGE_TOKEN
from longvila.data.template import video_token_id
from longvila.model.loss import LossOutput, chunked_cross_entropy_sum, shift_labels
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
    token_ids: torch.Tensor | None = None  # text-only batches: ids, embedded only after sharding (see forward)


ATTN_IMPLEMENTATION = "longvila"
"""The name of the default (one device, torch) attention in transformers' registry; a model given another layout
registers its dispatcher under a name of its own (:meth:`VILAModel.set_attention`)."""


def use_longvila_attention(llm: nn.Module) -> None:
    """Switch the LLM to the default "longvila" attention at runtime (never saved: transformers does not
    serialise it)."""
    from transformers import AttentionInterface

    from longvila.distributed.attention import AttentionDispatcher

    AttentionInterface.register(ATTN_IMPLEMENTATION, AttentionDispatcher())  # stateless: registering again is a no-op
    llm.config._attn_implementation = ATTN_IMPLEMENTATION


def _identity(seq: SequenceInputs) -> SequenceInputs:
    return seq


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
        """(N, 3, H, W) processed pixels -> (N, T, H_llm): SigLIP hidden_states[select_layer], all tokens, projected."""
        if frames.dim() != 4:
            raise ValueError(f"frames must be (N, 3, H, W), got shape {tuple(frames.shape)}")
        vt_param = next(self.vision_tower.parameters())
        feats = vision_features(
            self.vision_tower, frames.to(vt_param.device, vt_param.dtype), self.config["mm_vision_select_layer"]
        )
        proj_dtype = next(self.mm_projector.parameters()).dtype
        return self.mm_projector(feats.to(proj_dtype))

    # ---------------------------------------------------------------- sequence
    def build_sequence(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None,
        media: list[list[torch.Tensor]] | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> SequenceInputs:
        """Expand every placeholder into its frames' embeddings and right-pad the batch.

        ``<image>`` -> the frame's T tokens; ``<video>`` -> per frame, T tokens then the "\\n" embedding. Expanded
        positions are labelled IGNORE_INDEX. All frames of the batch go through ONE ``frame_encoder`` call.
        """
        if input_ids.dim() != 2 or labels.shape != input_ids.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must both be (B, L)"
            )
        bsz, _ = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.to(torch.bool)
        if position_ids is not None and position_ids.shape != input_ids.shape:
            raise ValueError(f"position_ids {tuple(position_ids.shape)} != input_ids {tuple(input_ids.shape)}")
        media = media if media is not None else [[] for _ in range(bsz)]
        if len(media) != bsz:
            raise ValueError(f"media has {len(media)} entries for a batch of {bsz} samples")

        ids = self.tokenizer_ids
        is_placeholder = (input_ids == ids.image) | (input_ids == ids.video)
        for b in range(bsz):
            n_ph = int((is_placeholder[b] & attention_mask[b]).sum())
            if n_ph != len(media[b]):
                raise ValueError(f"sample {b}: {n_ph} media placeholders but {len(media[b])} media entries")
            for k, (tok, m) in enumerate(zip(input_ids[b][is_placeholder[b] & attention_mask[b]].tolist(), media[b])):
                if m.dim() != 4:
                    raise ValueError(f"sample {b} media {k}: expected (T, 3, H, W), got shape {tuple(m.shape)}")
                if tok == ids.image and m.shape[0] != 1:
                    raise ValueError(f"sample {b} media {k}: <image> needs T=1 frame, got T={m.shape[0]}")

        embed = self.llm.get_input_embeddings()
        # Placeholders are never embedded: VILA adds them to the tokenizer without resizing the embedding, so
        # their ids may lie past the table. Look up id 0 instead; those rows are replaced by media features below.
        text_embeds = embed(input_ids.masked_fill(is_placeholder, 0))
        flat_media = [m for sample in media for m in sample]
        features: list[torch.Tensor] = []
        if flat_media:
            frame_feats = self.frame_encoder(torch.cat([m.to(device) for m in flat_media]))
            frame_feats = frame_feats.to(text_embeds.dtype)
            features = list(torch.split(frame_feats, [m.shape[0] for m in flat_media]))
        newline = embed(torch.tensor([ids.newline], device=device))  # (1, H)

        seqs_e, seqs_l, seqs_p = [], [], []
        feat_iter = iter(features)
        for b in range(bsz):
            keep = attention_mask[b].nonzero().squeeze(1)
            tok_b, emb_b, lab_b = input_ids[b, keep], text_embeds[b, keep], labels[b, keep]
            pos_b = position_ids[b, keep] if position_ids is not None else None
            ph = ((tok_b == ids.image) | (tok_b == ids.video)).nonzero().squeeze(1).tolist()
            chunks_e, chunks_l, chunks_p, prev = [], [], [], 0
            for p in ph:
                chunks_e.append(emb_b[prev:p])
                chunks_l.append(lab_b[prev:p])
                feats = next(feat_iter)  # (T, tokens, H)
                if int(tok_b[p]) == ids.video:
                    feats = torch.cat([feats, newline.expand(feats.shape[0], 1, -1)], dim=1)
                flat = feats.reshape(-1, feats.shape[-1])
                chunks_e.append(flat)
                chunks_l.append(lab_b.new_full((flat.shape[0],), IGNORE_INDEX))
                if pos_b is not None:
                    chunks_p.append(pos_b[prev:p])
                    chunks_p.append(pos_b[p] + torch.arange(flat.shape[0], device=device))
                prev = p + 1
            chunks_e.append(emb_b[prev:])
            chunks_l.append(lab_b[prev:])
            seq_e, seq_l = torch.cat(chunks_e), torch.cat(chunks_l)
            if pos_b is None:
                seq_p = torch.arange(seq_e.shape[0], device=device)
            elif not ph:
                seq_p = pos_b
            else:
                chunks_p.append(pos_b[prev:])
                seq_p = _renumber_documents(torch.cat(chunks_p))
            seqs_e.append(seq_e)
            seqs_l.append(seq_l)
            seqs_p.append(seq_p)
        return SequenceInputs(*_right_pad(seqs_e, seqs_l, seqs_p))

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
        ids, labels, positions, mask = _right_pad(rows_i, rows_l, rows_p)
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
        **_,
    ) -> LossOutput:
        if self._is_text_only(input_ids, attention_mask, media):
            seq = self.build_text_sequence(input_ids, labels, attention_mask, position_ids)
        else:
            seq = self.build_sequence(input_ids, labels, attention_mask, media, position_ids)
        seq = replace(seq, labels=shift_labels(seq.labels, seq.position_ids))
        seq = self.sequence_sharder(seq)
        if seq.inputs_embeds is None:
            seq = replace(seq, inputs_embeds=self.llm.get_input_embeddings()(seq.token_ids), token_ids=None)
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
        """Non-reentrant activation checkpointing on every decoder and SigLIP encoder layer."""
        for part in (self.llm, self.vision_tower):
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


def _renumber_documents(pos: torch.Tensor) -> torch.Tensor:
    """Recount positions after expansion: each document keeps its first position and counts up by one."""
    n = pos.shape[0]
    idx = torch.arange(n, device=pos.device)
    starts = pos == 0
    starts[0] = True
    start_idx = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=0).values
    return pos[start_idx] + (idx - start_idx)


def _right_pad(
    seqs_e: list[torch.Tensor], seqs_l: list[torch.Tensor], seqs_p: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of embeddings (n, H) or token ids (n,) -> (values, labels, positions, mask), zero-padded on the right."""
    bsz, seq_len = len(seqs_e), max(e.shape[0] for e in seqs_e)
    ref = seqs_e[0]
    labels = seqs_l[0].new_full((bsz, seq_len), IGNORE_INDEX)
    positions = seqs_p[0].new_zeros(bsz, seq_len)
    mask = torch.zeros(bsz, seq_len, dtype=torch.bool, device=ref.device)
    rows_e = []
    for b, (e, lab, p) in enumerate(zip(seqs_e, seqs_l, seqs_p)):
        n = e.shape[0]
        rows_e.append(torch.cat([e, e.new_zeros(seq_len - n, *e.shape[1:])]) if n < seq_len else e)
        labels[b, :n] = lab
        positions[b, :n] = p
        positions[b, n:] = torch.arange(seq_len - n, device=p.device)  # padding: its own document
        mask[b, :n] = True
    return torch.stack(rows_e), labels, positions, mask
