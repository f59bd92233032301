"""Long-context evaluation: V-NIAH (``longvila vniah``) and passkey retrieval (``longvila passkey``).

Both share the frames/length x depth grid (:mod:`longvila.eval.grid`), teacher-forced and generated scoring
(:mod:`longvila.eval.scoring`), the SP runtime (:mod:`longvila.eval.runtime`), JSON and heatmap output
(:mod:`longvila.eval.report`) and the command plumbing (:mod:`longvila.eval.command`). Submodules are imported on
demand so ``import longvila.eval`` stays light.
"""

from longvila.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "vniah": ("run_vniah", "VNIAHConfig"),
    "passkey": ("run_passkey", "PasskeyConfig"),
    "runtime": ("load_runtime",),
    "grid": ("needle_index", "EvalError"),
    "scoring": ("teacher_forced", "is_correct"),
})
