"""Checks a stage can make from configs and folders alone, run before any weights load or data is tokenised.

A mistake found after the model has loaded costs minutes on a real checkpoint (and a queue slot on a cluster);
these decide the same things from ``config.json`` files and the checkpoint folder, so the run stops in one line
at once: a resume request with nothing to resume, and attention heads that the Ulysses degree cannot split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

from longvila.config import StageArguments
from longvila.errors import ConfigError
from longvila.distributed.mesh import SequenceParallelConfig, check_heads
from longvila.engine import checkpoint_store as store

logger = logging.getLogger("longvila")


def resolve_resume(args: StageArguments) -> Optional[store.Checkpoint]:
    """The checkpoint ``--resume_from_checkpoint`` names (``auto``: the newest complete one, or none)."""
    root = store.checkpoint_root(args.train.output_dir)
    return store.resolve_resume_request(args.train.resume_from_checkpoint, root)


def llm_config_file(args: StageArguments, embedded: Callable[[], Path]) -> Path:
    """The ``config.json`` of the LLM the stage will load: the HF folder of ``--model_name_or_path``, the
    ``llm/`` part of an ``--init_from`` VILA checkpoint, or the embedded default's (``embedded()`` builds it only
    when neither flag is given)."""
    m = args.model
    if m.model_name_or_path is not None:
        return Path(m.model_name_or_path) / "config.json"
    return Path(m.init_from or embedded()) / "llm" / "config.json"


def attention_heads(config_file: Path) -> tuple[int, int]:
    """(query heads, key/value heads) from an HF LLM config; KV heads default to the query heads, as in HF."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config_file}: cannot read the LLM config ({error})") from None
    if "num_attention_heads" not in config:
        raise ConfigError(f"{config_file}: no num_attention_heads; not an HF Qwen2/Llama config")
    heads = int(config["num_attention_heads"])
    return heads, int(config.get("num_key_value_heads") or heads)


def check_sequence_parallel_heads(args: StageArguments, sp: SequenceParallelConfig,
                                  embedded: Callable[[], Path]) -> None:
    """Ulysses splits attention heads over its ranks; refuse a degree the LLM's head counts cannot take."""
    if not sp.enabled:
        return
    config_file = llm_config_file(args, embedded)
    if not config_file.is_file():
        return  # the loader names the missing folder in its own one-line error
    q_heads, kv_heads = attention_heads(config_file)
    try:
        check_heads(q_heads, kv_heads, sp.ulysses_size)
    except ValueError as error:
        raise ConfigError(f"--seq_parallel_size {sp.sp_size} (ulysses {sp.ulysses_size}): {error}") from None
