"""Every public name a package lists resolves, and an unknown one fails like a normal attribute lookup."""

import importlib

import pytest

PACKAGES = ["longvila.data", "longvila.distributed", "longvila.eval", "longvila.kernels", "longvila.model",
            "longvila.plan"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_listed_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_unknown_name_is_an_attribute_error():
    import longvila.model

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        longvila.model.nope  # noqa: B018
    assert not hasattr(longvila.model, "nope")
