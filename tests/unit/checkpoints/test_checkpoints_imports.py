"""Every package the checkpoint modules import is a declared dependency (or the standard library).

huggingface_hub 2.x depends on httpx2; importing it directly works only while huggingface_hub keeps it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import gh200.checkpoints

PACKAGE = Path(gh200.checkpoints.__file__).parent
PYPROJECT = PACKAGE.parents[2] / "pyproject.toml"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_checkpoint_modules_import_only_declared_dependencies() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared: dict[str, str] = {}
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 10
    for module in modules:
        for name in _imported(module) - set(sys.stdlib_module_names) - {"gh200", "__future__"}:
            dists = {canonicalize_name(d) for d in providers.get(name, [name])}
            if not dists & declared:
                undeclared[f"{module.name}: {name}"] = ", ".join(sorted(dists))
    assert undeclared == {}


def test_the_import_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import httpx2\n    from yaml import safe_load\n")
    assert _imported(module) == {"httpx2", "yaml"}
