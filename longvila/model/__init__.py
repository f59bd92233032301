"""VLM = SigLIP vision tower + projector + causal LM, with VILA-layout checkpoint I/O and the tiny default.

Names are resolved lazily so that importing one light submodule (e.g. ``longvila.model.projector``) does not pull
in transformers' model zoo.
"""

from longvila.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "vlm": ("VILAModel", "SequenceInputs", "MediaTokenIds"),
    "loss": ("LossOutput", "cross_entropy_sum", "shift_labels"),
    "projector": ("MultimodalProjector", "MultimodalProjectorConfig"),
    "tokenizer": ("train_tokenizer",),
    "tiny": ("tiny_model_path",),
    "checkpoint": ("save_vila", "load_vila"),
    "lora": ("apply_llm_lora", "apply_vision_lora", "merge_lora"),
    "rope": ("extend_context",),
})
