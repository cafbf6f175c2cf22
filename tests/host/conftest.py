"""The shipped host suite: what a provisioned GH200 host must look like, checked with testinfra.

`gh200 verify --inventory INV` runs it over SSH through testinfra's ansible:// backend;
`gh200 verify --local` (or scripts/device-verify.sh) runs it on the machine itself.

Expectations come from the same variables that provision a host, layered:
the roles' defaults (ansible/roles/*/defaults/main.yml), then the host's inventory variables
(ansible:// backend), then any --gh200-expect YAML file. So the suite verifies any host
provisioned from any inventory, and a machine this bundle never provisioned (an expectation file
with gh200_verify_provisioned: false runs only the hardware checks).

Markers: `config` (what the roles configure), `gpu` (needs the host's NVIDIA GPUs),
`gh200` (GH200-only hardware facts). Each is skipped, with the reason, when the expectations
say it does not apply to the host; never silently.

With --gh200-recorded DIR the checks read a recorded host (gh200_facts.RecordedHost) instead:
the same check code, fed by a directory, so the GH200-only checks run in CI.

Needs only pytest, pytest-testinfra and PyYAML (jinja2 when present, for templated defaults).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from gh200_expectations import ROLES_DIR, ExpectationError, read_expect_file, role_defaults
from gh200_facts import RecordedHost


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gh200")
    group.addoption(
        "--gh200-expect",
        action="append",
        default=[],
        help="YAML file of expectations (gh200_* variables), applied over the inventory; repeatable",
    )
    group.addoption("--gh200-report", default=None, help="write one JSON line per check to this file")
    group.addoption(
        "--gh200-recorded",
        action="append",
        default=[],
        metavar="DIR",
        help="check a host recorded with `python3 gh200_facts.py record DIR` instead of the --hosts "
        "ones (hardware checks; the project's CI runs them this way); repeatable",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "config: configuration the gh200 roles provision")
    config.addinivalue_line("markers", "gpu: needs the host's NVIDIA GPUs")
    config.addinivalue_line("markers", "gh200: GH200-only hardware facts (64K pages, Grace NUMA nodes)")
    for recorded in config.getoption("--gh200-recorded"):
        if not (Path(recorded) / "host.json").is_file():
            raise pytest.UsageError(
                f"--gh200-recorded {recorded}: no host.json there (record it with gh200_facts.py)"
            )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    recorded = metafunc.config.getoption("--gh200-recorded")
    if recorded and "_gh200_recorded" in metafunc.fixturenames:
        hosts = [RecordedHost(Path(d)) for d in recorded]
        ids = [h.backend.get_pytest_id() for h in hosts]
        metafunc.parametrize("_gh200_recorded", hosts, ids=ids, scope="module", indirect=True)


# ----------------------------------------------------------------------------------------------
# Expectations


def render(values: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """Render the Jinja in string values (role defaults refer to other variables), where possible.

    Values that cannot be rendered outside Ansible stay as they are; no check relies on them.
    """
    try:
        import jinja2
    except ImportError:
        return values
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)

    def one(value: Any, context: dict[str, Any]) -> Any:
        if isinstance(value, str) and "{{" in value:
            try:
                text = env.from_string(value).render(context)
            except (jinja2.TemplateError, TypeError, KeyError, ValueError):
                return value
            return text
        if isinstance(value, list):
            return [one(v, context) for v in value]
        if isinstance(value, dict):
            return {k: one(v, context) for k, v in value.items()}
        return value

    out = dict(values)
    for _ in range(4):  # defaults refer to defaults that refer to defaults
        context = {**facts, **out}
        out = {k: one(v, context) for k, v in out.items()}
    return out


class Expect(dict[str, Any]):
    """The merged expectations for one host, with the sources they came from."""

    sources: list[str]

    def flag(self, name: str) -> bool:
        value = self.get(name)
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)


def load_expectations(host: Any, expect_files: list[str]) -> Expect:
    merged = role_defaults()
    sources = [f"role defaults ({ROLES_DIR})"]
    if getattr(host.backend, "NAME", "") == "ansible":
        inventory = {k: v for k, v in host.ansible.get_variables().items() if k.startswith("gh200_")}
        merged.update(inventory)
        sources.append(f"inventory ({len(inventory)} gh200_ variables)")
    known = set(merged)
    for name in expect_files:
        try:
            merged.update(read_expect_file(Path(name), known))
        except ExpectationError as err:
            raise pytest.UsageError(str(err)) from None
        sources.append(name)
    facts = {
        "ansible_architecture": host.system_info.arch,
        "ansible_distribution_release": host.system_info.codename or "",
        "playbook_dir": str(ROLES_DIR.parent / "playbooks"),
    }
    expect = Expect(render(merged, facts))
    expect.sources = sources
    return expect


_CACHE: dict[str, Expect] = {}


@pytest.fixture(scope="module")
def _gh200_recorded(request: pytest.FixtureRequest) -> RecordedHost | None:
    return getattr(request, "param", None)


@pytest.fixture(scope="module")
def host(_testinfra_host: Any, _gh200_recorded: RecordedHost | None) -> Any:
    """testinfra's host (--hosts), or a recorded one (--gh200-recorded): the checks cannot tell."""
    return _gh200_recorded if _gh200_recorded is not None else _testinfra_host


@pytest.fixture
def expect(host: Any, request: pytest.FixtureRequest) -> Expect:
    key = host.backend.get_pytest_id()
    if key not in _CACHE:
        _CACHE[key] = load_expectations(host, request.config.getoption("--gh200-expect"))
    return _CACHE[key]


@pytest.fixture(autouse=True)
def _applies(request: pytest.FixtureRequest) -> None:
    """Skip, with the reason, the checks the expectations say do not apply to this host."""
    if "host" not in request.fixturenames:
        return
    host = request.getfixturevalue("host")
    exp: Expect = request.getfixturevalue("expect")
    name = host.backend.get_pytest_id()
    if request.node.get_closest_marker("config") and not exp.flag("gh200_verify_provisioned"):
        pytest.skip(f"{name} was not provisioned by gh200 (gh200_verify_provisioned: false)")
    if request.node.get_closest_marker("gpu") and int(exp.get("gh200_verify_gpu_count") or 0) == 0:
        pytest.skip(f"the expectations give {name} no NVIDIA GPU (gh200_verify_gpu_count: 0)")
    if request.node.get_closest_marker("gh200") and not exp.flag("gh200_verify_gh200"):
        pytest.skip(f"{name} is not expected to be a GH200 host (gh200_verify_gh200: false)")


# ----------------------------------------------------------------------------------------------
# One line per check for `gh200 verify` (and a table at the end for plain pytest runs)

_RESULTS: list[dict[str, Any]] = []


def _title(item: pytest.Item) -> str:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or item.name
    return doc.strip().splitlines()[0].rstrip(".")


def _host_id(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "_gh200_recorded" in callspec.params:
        return str(callspec.params["_gh200_recorded"].backend.get_pytest_id())
    if callspec is not None and "_testinfra_host" in callspec.params:
        host = callspec.params["_testinfra_host"]
        return str(host.backend.get_pytest_id())
    match = re.search(r"\[(.*)\]$", item.nodeid)
    return match.group(1) if match else "local"


def _detail(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(report.longrepr)
        # The assertion's own message is its first line; pytest's introspection follows.
        first = text.strip().splitlines()[0] if text.strip() else text
        return " ".join(first.split())[:600]
    return ""


_ITEMS: dict[str, dict[str, Any]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Remembered per test id, so the report hook needs no hook wrapper (older pytest works too).
    for item in items:
        _ITEMS[item.nodeid] = {
            "check": _title(item),
            "host": _host_id(item),
            "markers": sorted({m.name for m in item.iter_markers()} & {"config", "gpu", "gh200"}),
        }


def pytest_collection_finish(session: pytest.Session) -> None:
    path = session.config.getoption("--gh200-report")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"collected": len(session.items)}) + "\n")


_CONFIG: dict[str, pytest.Config] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config
    path = session.config.getoption("--gh200-report")
    if path:
        Path(path).write_text("")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """One row per check: its call's outcome, or its setup's when setup did not pass (skips)."""
    if not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    info = _ITEMS.get(report.nodeid, {})
    row = {
        "check": info.get("check", report.nodeid),
        "test": report.nodeid.split("[")[0],
        "host": info.get("host", ""),
        "markers": info.get("markers", []),
        "outcome": "error" if report.when == "setup" and report.failed else report.outcome,
        "detail": _detail(report),
        "seconds": round(report.duration, 2),
    }
    _RESULTS.append(row)
    config = _CONFIG.get("config")
    path = config.getoption("--gh200-report") if config else None
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("gh200 host checks")
    width = min(70, max(len(r["check"]) for r in _RESULTS))
    for row in _RESULTS:
        line = f"{row['outcome']:<8} {row['host']:<18} {row['check'][:width]:<{width}}"
        if row["detail"]:
            line += f"  {row['detail'][:160]}"
        tr.write_line(line)
    counts: dict[str, int] = {}
    for row in _RESULTS:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    tr.write_line(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
