"""Tell the kinds of model folder apart, so a folder given to the wrong flag fails in one line that names the
right flag instead of deep inside a loader.

Users hold three kinds: a VILA-layout checkpoint (``--init_from``), an HF causal LM folder
(``--model_name_or_path``) and an HF SigLIP folder, full ``SiglipModel`` or ``SiglipVisionModel``
(``--vision_tower``). Only the top-level ``config.json`` is read.
"""

from __future__ import annotations

import json
from pathlib import Path

LLM_TYPES = ("qwen2", "llama")
SIGLIP_TYPES = ("siglip", "siglip_vision_model")
FLAG_FOR_KIND = {"vila": "--init_from", "llm": "--model_name_or_path", "siglip": "--vision_tower"}
DESCRIPTION = {"vila": "a VILA-layout checkpoint", "llm": "an HF causal LM folder",
               "siglip": "an HF SigLIP folder"}


def folder_kind(path: str | Path) -> tuple[str, str | None]:
    """(kind, model_type): kind is "vila", "llm", "siglip" or "unknown"; "missing" without a config.json,
    "unreadable" when it is not JSON."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        return "missing", None
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "unreadable", None
    model_type = cfg.get("model_type")
    if "llm_cfg" in cfg or model_type in ("llava_llama", "llava"):
        return "vila", model_type
    if model_type in LLM_TYPES:
        return "llm", model_type
    if model_type in SIGLIP_TYPES:
        return "siglip", model_type
    return "unknown", model_type


def require_kind(path: str | Path, expected: str, flag: str) -> None:
    """ValueError (one line) unless ``path`` is a folder of the ``expected`` kind; names the flag it belongs to."""
    kind, model_type = folder_kind(path)
    if kind == expected:
        return
    if kind == "unreadable":
        raise ValueError(f"{flag} {path}: config.json is not valid JSON; expected {DESCRIPTION[expected]}")
    if kind == "missing":
        raise ValueError(f"{flag} {path}: no config.json there; expected {DESCRIPTION[expected]}")
    if kind == "unknown":
        raise ValueError(f"{flag} {path}: model_type {model_type!r} is not {DESCRIPTION[expected]} "
                         f"(LLMs: {', '.join(LLM_TYPES)}; vision towers: {', '.join(SIGLIP_TYPES)})")
    raise ValueError(f"{flag} {path} is {DESCRIPTION[kind]} ({model_type}), not {DESCRIPTION[expected]}: "
                     f"pass it as {FLAG_FOR_KIND[kind]}")
