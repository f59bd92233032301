"""VLM = SigLIP vision tower + projector + causal LM, with VILA-layout checkpoint I/O and the tiny default.

Names are resolved lazily so that importing one light submodule (e.g. ``longvila.model.projector``) does not pull
in transformers' model zoo.
"""

from importlib import import_module

_EXPORTS = {
    "VILAModel": "vlm",
    "SequenceInputs": "vlm",
    "MediaTokenIds": "vlm",
    "LossOutput": "loss",
    "cross_entropy_sum": "loss",
    "shift_labels": "loss",
    "MultimodalProjector": "projector",
    "MultimodalProjectorConfig": "projector",
    "train_tokenizer": "tokenizer",
    "tiny_model_path": "tiny",
    "save_vila": "checkpoint",
    "load_vila": "checkpoint",
    "apply_llm_lora": "lora",
    "apply_vision_lora": "lora",
    "merge_lora": "lora",
    "local_attention": "attention",
    "extend_context": "rope",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
