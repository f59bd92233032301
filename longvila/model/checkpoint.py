"""Save and load VILA-layout checkpoints (top config.json + llm/ + vision_tower/ + mm_projector/).

The layout is VILA's so that released stage-3 checkpoints load as-is and our outputs load in VILA; every
subfolder is a plain transformers folder (AutoModelForCausalLM / SiglipVisionModel / AutoTokenizer /
AutoImageProcessor). Our own tiny default goes through exactly the same code as a real checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from longvila.constants import IMAGE_TOKEN, VILA_VIDEO_TOKEN
from longvila.data.template import video_token_id
from longvila.model.lora import has_lora
from longvila.model.projector import MultimodalProjector
from longvila.model.tokenizer import single_token_id
from longvila.model.tokenizer_files import write_vila_tokenizer_files
from longvila.model.vila_features import check_supported
from longvila.model.vlm import MediaTokenIds, VILAModel

LLM_DIR, VISION_DIR, PROJECTOR_DIR = "llm", "vision_tower", "mm_projector"
VISION_PREFIX = "vision_model."
# Keys the runtime may set on an HF config that must never reach disk (plain transformers could not load them).
_RUNTIME_ONLY_KEYS = ("_attn_implementation", "attn_implementation", "_attn_implementation_internal")


def _json_config(config) -> dict:
    return json.loads(config.to_json_string(use_diff=False))


def _strip_runtime_keys(config_file: Path) -> None:
    """Drop runtime-only attention settings from a written HF config (defensive: 5.23 does not write them)."""
    raw = json.loads(config_file.read_text())
    if any(k in raw for k in _RUNTIME_ONLY_KEYS):
        for k in _RUNTIME_ONLY_KEYS:
            raw.pop(k, None)
        config_file.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def _write_legacy_rope_keys(config_file: Path) -> None:
    """Also write 4.x-style ``rope_theta`` / ``rope_scaling`` next to transformers 5's ``rope_parameters``.

    transformers 5 saves the RoPE base only inside ``rope_parameters``; transformers 4.x (VILA) ignores that key
    and would silently fall back to its default base (wrong for Qwen2-7B and for every stage-4 model).
    transformers 5 still reads the file through ``rope_parameters``.
    """
    raw = json.loads(config_file.read_text())
    params = raw.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" not in params:
        return
    raw["rope_theta"] = params["rope_theta"]
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    raw["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    config_file.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


def _write_legacy_vision_keys(vision_dir: Path) -> None:
    """Prefix SigLIP weight names with ``vision_model.`` as transformers 4.x (and so VILA) expects.

    transformers 5 saves a freshly built SiglipVisionModel without the prefix but still loads prefixed files
    (legacy PrefixChange), so the prefixed form is the one both generations read.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    renamed: dict[str, str] = {}
    for shard in sorted(vision_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {"format": "pt"}
        if all(k.startswith(VISION_PREFIX) for k in tensors):
            continue
        fixed = {k if k.startswith(VISION_PREFIX) else VISION_PREFIX + k: v for k, v in tensors.items()}
        renamed.update({k: VISION_PREFIX + k for k in tensors if not k.startswith(VISION_PREFIX)})
        save_file(fixed, str(shard), metadata=metadata)
    index = vision_dir / "model.safetensors.index.json"
    if renamed and index.is_file():
        raw = json.loads(index.read_text())
        raw["weight_map"] = {renamed.get(k, k): v for k, v in raw["weight_map"].items()}
        index.write_text(json.dumps(raw, indent=2) + "\n")


STALE_PATH_KEYS = ("resume_path", "_name_or_path")
"""Top-level keys that name the folder a config lives in: rewritten on every save, never carried over."""


def vila_config(model: VILAModel, out_dir: str | os.PathLike | None = None, **config_updates) -> dict:
    """Top-level VILA config.json, regenerated from the live modules so nested configs never go stale.

    ``resume_path`` (VILA's training loader needs it non-null) and ``_name_or_path`` name ``out_dir``.
    """
    llm_cfg = {**_json_config(model.llm.config), "_name_or_path": f"./{LLM_DIR}"}
    vision_cfg = {**_json_config(model.vision_tower.config), "_name_or_path": f"./{VISION_DIR}"}
    for cfg in (llm_cfg, vision_cfg):
        for k in _RUNTIME_ONLY_KEYS:
            cfg.pop(k, None)
    dtype = next(model.llm.parameters()).dtype
    skip = ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg", *STALE_PATH_KEYS)
    cfg = {k: v for k, v in model.config.items() if k not in skip}
    if out_dir is not None:
        cfg.update(resume_path=str(Path(out_dir).resolve()), _name_or_path=str(Path(out_dir).resolve()))
    cfg.update(
        architectures=["LlavaLlamaModel"],
        model_type="llava_llama",
        llm_cfg=llm_cfg,
        vision_tower_cfg=vision_cfg,
        mm_projector_cfg={**model.mm_projector.config.to_dict(), "_name_or_path": f"./{PROJECTOR_DIR}"},
        hidden_size=model.llm.config.hidden_size,
        mm_hidden_size=model.vision_tower.config.hidden_size,
        model_dtype=str(dtype),
    )
    cfg.update(config_updates)
    return cfg


def save_vila(model: VILAModel, tokenizer, image_processor, out_dir: str | os.PathLike, **config_updates) -> Path:
    """Write ``out_dir`` in VILA layout; ``config_updates`` are merged into the top-level config.json last.

    LoRA must be merged first (``merge_lora``): VILA and plain transformers expect plain weights.
    """
    for part in (model.llm, model.vision_tower):
        if has_lora(part):
            raise ValueError(
                f"{type(part).__name__} still carries LoRA adapters; call merge_lora(model) before save_vila"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.llm.save_pretrained(out / LLM_DIR)
    _strip_runtime_keys(out / LLM_DIR / "config.json")
    _write_legacy_rope_keys(out / LLM_DIR / "config.json")
    tokenizer.save_pretrained(out / LLM_DIR)
    write_vila_tokenizer_files(tokenizer, out / LLM_DIR, source_dir=getattr(tokenizer, "name_or_path", None))
    model.vision_tower.save_pretrained(out / VISION_DIR)
    _strip_runtime_keys(out / VISION_DIR / "config.json")
    _write_legacy_vision_keys(out / VISION_DIR)
    image_processor.save_pretrained(out / VISION_DIR)
    model.mm_projector.save_pretrained(out / PROJECTOR_DIR)
    cfg = vila_config(model, out, **config_updates)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def ensure_media_tokens(tokenizer) -> None:
    """Add ``<image>`` and a video placeholder (VILA's ``<vila/video>``) when missing, as VILA does at load time.

    No embedding resize is needed: placeholders are replaced by media features and never embedded.
    """
    try:
        single_token_id(tokenizer, IMAGE_TOKEN)
    except ValueError:
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    try:
        video_token_id(tokenizer)
    except ValueError:
        tokenizer.add_tokens([VILA_VIDEO_TOKEN], special_tokens=True)


def load_llm(path: str | os.PathLike, dtype: torch.dtype):
    """HF causal LM and its tokenizer (media placeholders added when missing), loaded straight in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="right")
    ensure_media_tokens(tokenizer)
    return llm, tokenizer


def load_vision_tower(path: str | os.PathLike, dtype: torch.dtype):
    """SigLIP vision tower and its image processor from a SiglipVisionModel *or* a full SiglipModel folder.

    A full SiglipModel (siglip-so400m-patch14-384 as released) keeps the vision weights under ``vision_model.``
    and its vision config under ``vision_config``; ``SiglipVisionModel.from_pretrained`` reads both forms.
    """
    from transformers import AutoImageProcessor, SiglipVisionModel

    vision_tower = SiglipVisionModel.from_pretrained(path, dtype=dtype)
    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    return vision_tower, image_processor


def load_vila(path: str | os.PathLike, dtype: torch.dtype = torch.float32, token_order: str | None = None,
              flag: str = "--init_from"):
    """Load a VILA-layout folder -> (VILAModel, tokenizer, image_processor); ours and released ones alike.

    ``token_order`` overrides the projector's merged-token order (``column_major`` for 2024 ``mlp_downsample``
    checkpoints; see ``longvila.model.projector``). ``flag`` is the option errors name for ``path``.
    """
    from longvila.model.folders import require_kind

    root = Path(path)
    require_kind(root, "vila", flag)
    cfg = json.loads((root / "config.json").read_text())
    for key, sub in (("llm_cfg", LLM_DIR), ("vision_tower_cfg", VISION_DIR), ("mm_projector_cfg", PROJECTOR_DIR)):
        if key not in cfg or not (root / sub).is_dir():
            raise ValueError(f"{root} is not a VILA checkpoint: needs {key!r} in config.json and a {sub}/ folder")
    check_supported(cfg, root)
    vision_type = json.loads((root / VISION_DIR / "config.json").read_text()).get("model_type")
    if vision_type not in ("siglip_vision_model", "siglip"):
        raise ValueError(f"vision tower model_type {vision_type!r} unsupported; only SigLIP towers are")

    llm, tokenizer = load_llm(root / LLM_DIR, dtype)
    vision_tower, image_processor = load_vision_tower(root / VISION_DIR, dtype)
    projector = MultimodalProjector.from_pretrained(
        root / PROJECTOR_DIR,
        mm_hidden_size=cfg.get("mm_hidden_size", vision_tower.config.hidden_size),
        hidden_size=cfg.get("hidden_size", llm.config.hidden_size),
        dtype=dtype,
        token_order=token_order,
    )
    model = VILAModel(llm, vision_tower, projector, MediaTokenIds.from_tokenizer(tokenizer), config=cfg)
    return model, tokenizer, image_processor
