"""Expectation files for the host suite: read, and refused with one line when they cannot be used.

One implementation for both callers: the suite's conftest (which runs on hosts with only pytest,
pytest-testinfra and PyYAML, so this module needs nothing else) and `gh200 verify`, which loads
this file by path to refuse a bad --expect before any host is contacted.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "ansible" / "roles"

# The suite's own knobs. Unknown names under this prefix are refused (a typo would silently
# turn a check off or leave a default in place). Other gh200_* names are accepted: the verify
# role writes every gh200_* host variable it sees, run-time ones (registered results) included.
VERIFY_PREFIX = "gh200_verify_"


class ExpectationError(ValueError):
    """An expectation file that cannot be used: `message` names the file, `fix` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(f"{message} (fix: {fix})")
        self.message = message
        self.fix = fix


def role_defaults(roles_dir: Path = ROLES_DIR) -> dict[str, Any]:
    """Every role's defaults, merged: the variables an expectation file may set."""
    merged: dict[str, Any] = {}
    for path in sorted(roles_dir.glob("*/defaults/main.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def read_expect_file(path: Path, known: set[str]) -> dict[str, Any]:
    """The file's gh200_* variables; ExpectationError when it is missing, not YAML, not a mapping,
    or sets a name that is not a gh200 variable or not one of the suite's own."""
    if not path.is_file():
        raise ExpectationError(f"expectation file {path} does not exist", "check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ExpectationError(
            f"expectation file {path} is not valid YAML{where}: {problem}",
            "correct the YAML there (a mapping of gh200_* variables, e.g. `gh200_verify_gpu_count: 2`)",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ExpectationError(f"expectation file {path} cannot be read: {err}", "check the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ExpectationError(
            f"expectation file {path} holds a {type(data).__name__}, not a mapping",
            "write `name: value` lines of gh200_* variables, e.g. `gh200_verify_gpu_count: 2`",
        )
    for key in data:
        name = str(key)
        if name.startswith("gh200_") and (name in known or not name.startswith(VERIFY_PREFIX)):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75) or [
            k for k in (VERIFY_PREFIX + name, "gh200_" + name) if k in known
        ]
        hint = f"did you mean {close[0]}?" if close else "see ansible/roles/*/defaults/main.yml for the names"
        raise ExpectationError(f"expectation file {path} sets unknown variable {name!r}", hint)
    return {str(k): v for k, v in data.items()}
