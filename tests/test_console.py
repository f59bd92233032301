"""The one console wrapper: each user-facing error class reads as one line with its exit code; bugs keep their
traceback."""

import pytest

from longvila.errors import ConfigError
from longvila.console import run_console
from longvila.errors import MediaError
from longvila.errors import CheckpointError, TrainingError
from longvila.errors import DataError
from longvila.errors import EvalError


@pytest.mark.parametrize("error, label, code", [
    (ConfigError("bad flag"), "error", 2), (EvalError("bad request"), "error", 2),
    (DataError("every sample failed"), "data error", 1), (MediaError("cannot decode"), "media error", 1),
    (TrainingError("loss is nan"), "training stopped", 1), (CheckpointError("disk full"), "training stopped", 1),
])
def test_user_errors_are_one_line_with_their_exit_code(error, label, code, capsys):
    def run(argv):
        assert argv == ["--x", "1"]
        raise error

    with pytest.raises(SystemExit) as exited:
        run_console("longvila demo", run, ["--x", "1"])
    assert exited.value.code == code
    assert capsys.readouterr().err == f"longvila demo: {label}: {error}\n"


def test_other_exceptions_are_bugs_and_propagate():
    with pytest.raises(ZeroDivisionError):
        run_console("longvila demo", lambda argv: 1 / 0, [])
    assert run_console("longvila demo", lambda argv: len(argv), ["a", "b"]) == 2
