"""What the planner knows about a model: layer widths, head counts and exact parameter counts per part.

Parameter counts come from building the real model on PyTorch's ``meta`` device (no memory, no download) with the
same classes the stages train, then applying the stage's trainability (``VILAModel.set_trainable``) and, for LoRA,
``longvila.model.lora.apply_llm_lora``. So a count can never drift from what a stage really trains: tied
embeddings, biases, LongLoRA's trainable embedding and norms are all whatever the code makes them.

A model is named three ways: a VILA-layout folder (``config.json`` + ``llm/``, ``vision_tower/``, ``mm_projector/``),
an HF LLM folder (with the vision tower from ``--vision_tower``), or a released shape by name
(``longvila.model.real_shapes``: ``qwen2-1.5b``, ``qwen2-7b``, ``llama3-8b``; tower ``siglip-so400m``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from longvila.model.real_shapes import LLM_SHAPES, RELEASED_LAYERS, VISION_SHAPES, llm_config, vision_config
from longvila.model.vlm import DEFAULT_VILA_CONFIG
from longvila.plan.layout import kv_replication


@dataclass(frozen=True)
class ModelShape:
    """Widths and exact parameter counts of one VILA model under one stage's trainability."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tied_embeddings: bool
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_layers: int
    vision_patches: int
    vision_image_size: int
    """Pixels per side of a processed frame (3 x size x size values reach the tower)."""
    tokens_per_frame: int
    llm_params: int
    vision_params: int
    projector_params: int
    trainable_params: int
    largest_trainable: int
    """Elements of the largest trainable tensor: DeepSpeed reduces a gradient larger than its bucket on its own."""
    embedding_trainable: bool
    head_trainable: bool
    trainable_llm_fraction: float
    """Share of the LLM's decoder-layer weights that get weight gradients (1 for full fine-tuning, ~0 for LoRA)."""
    source: str
    vision_select_layer: int = DEFAULT_VILA_CONFIG["mm_vision_select_layer"]
    """``mm_vision_select_layer``: the hidden state the projector reads (VILA's -2: the tower's last layer never
    runs, ``longvila.model.vlm.vision_features``)."""
    projector_type: str = "mlp_downsample"

    @property
    def vision_layers_run(self) -> int:
        """Tower layers a frame goes through: those before the selected hidden state (26 of SigLIP-so400m's 27 at
        -2; none of a one-layer probe's, whose selected state is the patch embeddings' output)."""
        states = self.vision_layers + 1  # the embeddings' output, then one per layer
        return self.vision_select_layer + states if self.vision_select_layer < 0 else self.vision_select_layer

    @property
    def total_params(self) -> int:
        return self.llm_params + self.vision_params + self.projector_params

    @property
    def lm_head_elements(self) -> int:
        return self.vocab_size * self.hidden_size

    def attention_widths(self, ulysses: int) -> tuple[int, int]:
        """(q, kv) elements per token of one layer's attention on a Ulysses rank's view: kv counted with the copies
        that a Ulysses degree above the kv-head count makes (``layout.kv_replication``)."""
        copies = kv_replication(self.num_q_heads, self.num_kv_heads, ulysses)
        return self.num_q_heads * self.head_dim, self.num_kv_heads * self.head_dim * copies

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer (what a forward multiplies every token by)."""
        q = self.num_q_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return self.hidden_size * (q + 2 * kv) + q * self.hidden_size + 3 * self.hidden_size * self.intermediate_size


SELECT_LAYER = DEFAULT_VILA_CONFIG["mm_vision_select_layer"]
"""The hidden state VILA's projector reads unless a folder's ``config.json`` says otherwise."""


def _folder_configs(path: Path, vision_tower: str | None):
    """(llm config, vision config, projector type, label, select layer) read from a VILA or HF LLM folder."""
    from transformers import AutoConfig, SiglipVisionConfig

    from longvila.model.folders import folder_kind

    kind, _ = folder_kind(path)
    if kind == "vila":
        top = json.loads((path / "config.json").read_text())
        llm = AutoConfig.from_pretrained(path / "llm")
        vision = SiglipVisionConfig.from_pretrained(path / "vision_tower")
        projector = json.loads((path / "mm_projector" / "config.json").read_text()).get("mm_projector_type")
        select = top.get("mm_vision_select_layer", SELECT_LAYER)
        return llm, vision, projector or top.get("mm_projector", "mlp_downsample"), f"VILA folder {path}", select
    if kind == "llm":
        return (AutoConfig.from_pretrained(path), _vision(vision_tower), "mlp_downsample", f"HF LLM folder {path}",
                SELECT_LAYER)
    raise ValueError(f"--model {path}: not a VILA-layout folder or an HF LLM folder (found {kind})")


def _vision(name_or_path: str | None, num_layers: int | None = None):
    from transformers import SiglipVisionConfig

    name = name_or_path or "siglip-so400m"
    if name in VISION_SHAPES:
        return vision_config(name, num_layers or RELEASED_LAYERS[name])
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(f"--vision_tower {name}: not a SigLIP folder or one of {', '.join(VISION_SHAPES)}")
    return SiglipVisionConfig.from_pretrained(path)


def _configs(model: str, vision_tower: str | None, num_layers: int | None, vision_layers: int | None):
    if model in LLM_SHAPES:
        return (llm_config(model, num_layers or RELEASED_LAYERS[model]), _vision(vision_tower, vision_layers),
                "mlp_downsample", f"{model} (released shapes)", SELECT_LAYER)
    path = Path(model)
    if not path.is_dir():
        raise ValueError(f"--model {model}: no such folder, and not a known shape ({', '.join(LLM_SHAPES)})")
    llm, vision, projector, label, select = _folder_configs(path, vision_tower)
    if num_layers:
        llm.num_hidden_layers = num_layers
    if vision_layers:
        vision.num_hidden_layers = vision_layers
    return llm, vision, projector, label, select


def resolve_model_shape(model: str, vision_tower: str | None = None, trains: frozenset = frozenset({"llm"}),
                        lora: bool = False, num_layers: int | None = None,
                        vision_layers: int | None = None, lora_vision: bool = False) -> ModelShape:
    """Count a model's parameters for a stage that trains ``trains`` (parts: llm, vision_tower, mm_projector).

    ``lora`` / ``lora_vision`` put LoRA on the LLM / the tower as ``--lora_llm`` / ``--lora_vision`` do (a LoRA
    tower's base weights are frozen; its activations still get gradients). ``num_layers`` / ``vision_layers``
    override the depth (the few-layer real-shape probes the memory benchmark measures)."""
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    from longvila.model.lora import apply_llm_lora, apply_vision_lora
    from longvila.model.projector import MultimodalProjector, MultimodalProjectorConfig, tokens_per_frame
    from longvila.model.vlm import MediaTokenIds, VILAModel

    llm_cfg, vision_cfg, projector_type, label, select_layer = _configs(model, vision_tower, num_layers,
                                                                        vision_layers)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llm_cfg)
        tower = SiglipVisionModel(vision_cfg)
        projector = MultimodalProjector(MultimodalProjectorConfig(projector_type), vision_cfg.hidden_size,
                                        llm_cfg.hidden_size)
        vlm = VILAModel(llm, tower, projector, MediaTokenIds(image=-1, video=-2, newline=-3))
        vlm.set_trainable(vision_tower="vision_tower" in trains, mm_projector="mm_projector" in trains,
                          llm="llm" in trains)
        if lora:
            apply_llm_lora(vlm)
        if lora_vision:
            apply_vision_lora(vlm)
    trainable = [p for p in vlm.parameters() if p.requires_grad]
    layer_weights = [p for n, p in vlm.llm.named_parameters() if ".layers." in n and p.dim() == 2 and "lora_" not in n]
    trained_layer = sum(p.numel() for p in layer_weights if p.requires_grad)
    patches = (vision_cfg.image_size // vision_cfg.patch_size) ** 2
    head_dim = getattr(llm_cfg, "head_dim", None) or llm_cfg.hidden_size // llm_cfg.num_attention_heads
    return ModelShape(
        name=model, hidden_size=llm_cfg.hidden_size, intermediate_size=llm_cfg.intermediate_size,
        num_layers=llm_cfg.num_hidden_layers, num_q_heads=llm_cfg.num_attention_heads,
        num_kv_heads=llm_cfg.num_key_value_heads, head_dim=head_dim, vocab_size=llm_cfg.vocab_size,
        max_position_embeddings=int(getattr(llm_cfg, "max_position_embeddings", 0) or 0),
        tied_embeddings=bool(getattr(llm_cfg, "tie_word_embeddings", False)),
        vision_hidden_size=vision_cfg.hidden_size, vision_intermediate_size=vision_cfg.intermediate_size,
        vision_layers=vision_cfg.num_hidden_layers, vision_patches=patches, vision_image_size=vision_cfg.image_size,
        tokens_per_frame=tokens_per_frame(patches, projector_type),
        llm_params=sum(p.numel() for p in vlm.llm.parameters()),
        vision_params=sum(p.numel() for p in vlm.vision_tower.parameters()),
        projector_params=sum(p.numel() for p in vlm.mm_projector.parameters()),
        trainable_params=sum(p.numel() for p in trainable),
        largest_trainable=max((p.numel() for p in trainable), default=0),
        embedding_trainable=vlm.llm.get_input_embeddings().weight.requires_grad,
        head_trainable=vlm.llm.get_output_embeddings().weight.requires_grad,
        trainable_llm_fraction=trained_layer / max(1, sum(p.numel() for p in layer_weights)),
        source=label, vision_select_layer=select_layer, projector_type=projector_type,
    )
