"""The fault-injection switch: parsing, and that it fires only at its point, step and rank."""

import errno

import pytest

from longvila.engine.faults import Fault, inject


def test_parse_point_step_and_optional_rank():
    assert Fault.parse("mid_save:4:1") == Fault("mid_save", 4, 1)
    assert Fault.parse("after_save:2") == Fault("after_save", 2, None)
    for bad in ("mid_save", "explode:3", "mid_step:x", "mid_step:1:2:3"):
        with pytest.raises(ValueError, match="LONGVILA_FAULT"):
            Fault.parse(bad)


def test_enospc_fires_only_at_its_step_and_rank():
    fault = Fault("enospc", 3, 1)
    for point, step, rank in (("enospc", 2, 1), ("enospc", 3, 0), ("mid_save", 3, 1)):
        inject(fault, point, step, rank)  # no fault
    inject(None, "enospc", 3, 1)
    with pytest.raises(OSError) as raised:
        inject(fault, "enospc", 3, 1, "/ckpt/file")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == "/ckpt/file"
