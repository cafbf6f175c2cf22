"""The roles' conventions, checked: every variable a role defines carries its name as prefix;
every variable the example inventory sets exists in a role's defaults; every default is documented
by a comment somewhere above it in defaults/main.yml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gh200.paths import ansible_dir

ROLES = sorted(p for p in (ansible_dir() / "roles").iterdir() if (p / "tasks" / "main.yml").is_file())


def _defined(role: Path) -> set[str]:
    names: set[str] = set()
    defaults = role / "defaults" / "main.yml"
    if defaults.is_file():
        names |= set(yaml.safe_load(defaults.read_text()) or {})
    for path in (role / "tasks").glob("*.yml"):
        text = path.read_text()
        names |= set(re.findall(r"^\s*register:\s*(\w+)", text, re.M))
        names |= set(re.findall(r"^\s*loop_var:\s*(\w+)", text, re.M))
        for block in re.findall(r"ansible\.builtin\.set_fact:\n((?:\s{4,}.*\n)+)", text):
            names |= set(re.findall(r"^\s{4}(\w+):", block, re.M))
    return names


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_variable_a_role_defines_is_prefixed_by_the_role(role: Path) -> None:
    names = _defined(role)
    assert names, f"{role.name} defines no variable?"
    wrong = sorted(n for n in names if not n.startswith(role.name + "_"))
    assert not wrong, f"{role.name} defines {wrong}"


def test_example_inventory_sets_only_known_variables() -> None:
    known: set[str] = set()
    for role in ROLES:
        defaults = role / "defaults" / "main.yml"
        if defaults.is_file():
            known |= set(yaml.safe_load(defaults.read_text()) or {})
    example = ansible_dir() / "inventory" / "example" / "group_vars" / "gh200.yml"
    used = set(yaml.safe_load(example.read_text()))
    assert used and not used - known, sorted(used - known)


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_sits_in_a_commented_paragraph(role: Path) -> None:
    defaults = role / "defaults" / "main.yml"
    if not defaults.is_file():
        pytest.skip(f"{role.name} has no defaults")
    paragraphs = re.split(r"\n\s*\n", defaults.read_text())
    bare = [
        key
        for para in paragraphs
        if not re.search(r"^\s*#", para, re.M)
        for key in re.findall(r"^(gh200_\w+):", para, re.M)
    ]
    assert not bare, f"{role.name}: undocumented defaults {bare}"
