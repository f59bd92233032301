"""Long-context evaluation: V-NIAH (``longvila vniah``) and passkey retrieval (``longvila passkey``).

Both share the frames/length x depth grid (:mod:`longvila.eval.grid`), teacher-forced and generated scoring
(:mod:`longvila.eval.scoring`), the SP runtime (:mod:`longvila.eval.runtime`), JSON and heatmap output
(:mod:`longvila.eval.report`) and the command plumbing (:mod:`longvila.eval.command`). Submodules are imported on
demand so ``import longvila.eval`` stays light.
"""

from importlib import import_module

_EXPORTS = {
    "run_vniah": "vniah",
    "VNIAHConfig": "vniah",
    "run_passkey": "passkey",
    "PasskeyConfig": "passkey",
    "load_runtime": "grid",
    "teacher_forced": "grid",
    "needle_index": "grid",
    "is_correct": "grid",
    "EvalError": "grid",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
