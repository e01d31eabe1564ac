"""The documentation stays honest: every public module says what it exports."""

import importlib
import pkgutil

import pytest

import within_db

MODULES = sorted(m.name for m in pkgutil.walk_packages(within_db.__path__, "within_db.")
                 if m.name != "within_db.__main__")


@pytest.mark.parametrize("name", ["within_db", *MODULES])
def test_every_public_module_declares_what_it_exports(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    for attr in exported:
        if not hasattr(module, attr):  # a package may export its submodules
            importlib.import_module(f"{name}.{attr}")
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which it does not define"
