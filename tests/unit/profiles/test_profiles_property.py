"""Any YAML input yields a Profile/Stack or a ProfileError; never another exception.

Three sources of input: arbitrary YAML documents (nested mappings, lists, scalars), mutations of
the real reference profiles (keys deleted, types changed, junk inserted, names of files and
hosts replaced by odd text) and raw text (YAML-ish tokens and arbitrary characters). Every
input that loads is also validated, which must give a list of problems or a ProfileError.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles_testlib import PROFILES

from gh200.errors import ProfileError
from gh200.profiles import loader
from gh200.profiles.schema import Profile, Stack
from gh200.profiles.validate import Problem, validate

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_counter = itertools.count()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["vllm", "ik_llama", "stack", "mtp", "draft", "0-71", "dual-gh200", "2048:512", ""]),
)
keys = st.one_of(
    st.sampled_from(
        [
            "schema", "name", "kind", "extends", "engine", "host", "image", "model", "settings",
            "placement", "ranks", "cpu", "cpus", "gpu", "numa_node", "port", "profiles",
            "speculative", "expected", "env", "graft", "draft", "format", "gguf_file",
        ]
    ),
    st.text(max_size=12),
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


def _real_profiles() -> list[dict[str, Any]]:
    """Every profile and stack in profiles/, with its extends chain merged in."""
    return [loader.resolve_raw(PROFILES / f"{n}.yaml") for n in loader.list_names(PROFILES)]


REAL = _real_profiles()
# Text that lands where file and host names are built from profile values.
odd_names = st.one_of(
    st.sampled_from(["../../etc/passwd", "a" * 400, "x/y", "\x00", "glm52-awq", "local", "fast-slow"]),
    st.text(max_size=20),
)
cpu_lists = st.one_of(
    st.from_regex(r"\A[0-9]{1,12}(-[0-9]{0,12})?(,[0-9]{1,4}(-[0-9]{1,4})?)?\Z"),
    st.text(alphabet="0123456789-, x", max_size=12),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def mutated_profiles(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = [p for p in _paths(doc) if p]
        # Names and CPU lists reach the file system and the CPU-set code: draw them more often.
        action = draw(st.sampled_from(["delete", "replace", "insert", "retype", *["name", "cpus"] * 2]))
        if action == "name":
            key = draw(st.sampled_from(["extends", "host", "name", "profiles", "kind"]))
            value = draw(st.one_of(odd_names, st.lists(odd_names, max_size=3)))
            doc[key] = value
            continue
        if action == "cpus":
            where = draw(st.sampled_from(["cpu", "rank"]))
            cpus = draw(cpu_lists)
            placement = doc.setdefault("placement", {}) if isinstance(doc, dict) else {}
            if isinstance(placement, dict):
                if where == "cpu":
                    placement["cpu"] = {"numa_node": draw(st.integers(0, 3)), "cpus": cpus}
                else:
                    placement["ranks"] = [{"rank": 0, "gpu": 0, "numa_node": 0, "cpus": cpus}]
            continue
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(documents)
        elif action == "retype":
            value = parent[path[-1]]
            parent[path[-1]] = [value] if not isinstance(value, list) else {"x": value}
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(documents)
        elif isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), draw(documents))
    return doc


yaml_tokens = st.sampled_from(
    [
        "name: x\n", "schema: 1\n", "engine: vllm\n", "kind: stack\n", "extends: glm52-awq\n",
        "profiles: [a, b]\n", "- ", ": ", "{", "}", "[", "]", ",", "&a ", "*a", "!!int ", "!!float ",
        "!!bool ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!python/object:os.system ",
        "? ", "|\n  ", ">\n  ", "'", '"', "\t", "\n", "  ", "2026-13-01", "1e999", "0x1F", "~",
        "%YAML 1.1\n", "---\n", "...\n", "#c\n", "\\", "\ufeff", "cpus: '0-", "port: 99999\n",
    ]
)  # fmt: skip
raw_texts = st.one_of(
    st.lists(yaml_tokens, max_size=25).map("".join),
    st.text(max_size=200),
    st.lists(st.one_of(yaml_tokens, st.text(max_size=5)), max_size=20).map("".join),
)


def _check(directory: Path, content: str | bytes) -> None:
    """Load (and validate) one document; only a result or a ProfileError may come out."""
    path = directory / f"p{next(_counter)}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    try:
        loaded = loader.load_any(path)
    except ProfileError as err:
        assert err.message and "\n" not in err.one_line()
        return
    assert isinstance(loaded, Profile | Stack)
    try:
        problems = validate(path)
    except ProfileError:
        return
    assert all(isinstance(p, Problem) for p in problems)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose neighbours are the real profiles, so extends and stacks resolve."""
    directory = tmp_path_factory.mktemp("property")
    for source in PROFILES.glob("*.yaml"):
        (directory / source.name).write_text(source.read_text())
    return directory


@SETTINGS
@given(doc=documents)
def test_arbitrary_documents(workdir: Path, doc: Any) -> None:
    _check(workdir, _dump(doc))


@SETTINGS
@given(doc=mutated_profiles())
def test_mutated_reference_profiles(workdir: Path, doc: Any) -> None:
    _check(workdir, _dump(doc))


@SETTINGS
@given(text=raw_texts)
def test_raw_text(workdir: Path, text: str) -> None:
    _check(workdir, text)


@settings(max_examples=50, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_raw_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _check(tmp_path_factory.getbasetemp(), data)


def test_unmutated_reference_profiles_load(workdir: Path) -> None:
    """The mutation base itself is valid: failures above come from the mutations."""
    for name in loader.list_names(PROFILES):
        assert validate(workdir / f"{name}.yaml") == []


LAUGHS = "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join('x' * 9)}]\n"
    for p, k in zip(["", "a", "b", "c", "d", "e", "f"], "abcdefg", strict=True)
)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,  # deeper than the parser's recursion
        "a: " + "{b: " * 3000 + "1" + "}" * 3000,
        "a: &a [*a]\n",  # a list that contains itself
        "&a {x: *a}\n",
        LAUGHS + "extends: glm52-awq\nname: laughs\nenv: *g\nexpected: *g\n",  # 9^7 shared items
    ],
    ids=["deep-list", "deep-map", "self-list", "self-map", "billion-laughs"],
)
def test_pathological_yaml(workdir: Path, text: str) -> None:
    _check(workdir, text)
