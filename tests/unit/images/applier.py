"""The patch applier (containers/vllm/apply_patches.py, a script, not a package module) loaded once
for the unit tests, under the name scripts/mutation.py stages it as, so its mutants are the ones run."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from gh200.paths import containers_dir

NAME = "gh200_apply_patches"


def load_applier() -> ModuleType:
    if NAME in sys.modules:
        return sys.modules[NAME]
    spec = importlib.util.spec_from_file_location(NAME, containers_dir() / "vllm" / "apply_patches.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module
