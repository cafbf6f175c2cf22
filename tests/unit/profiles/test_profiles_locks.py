"""images.lock / models.lock: unlocked until resolved, written atomically, never an invented pin.

The resolvers (registry, hub) are injected as plain callables here: they are the seams of our
own logic. `gh200 lock` end to end runs against the checkpoints suite's stand-in hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from profiles_testlib import PROFILES, REPO, Run, run_gh200

from gh200.errors import LockError, OperationFailed
from gh200.profiles import container_spec, load_profile
from gh200.profiles.loader import list_names, load_any
from gh200.profiles.locks import (
    DIGEST_RE,
    SHA_RE,
    all_pins,
    image_pin,
    lock_state,
    model_pins,
    require_locked,
    write_locks,
)
from gh200.profiles.schema import Profile


def _profiles() -> list[Profile]:
    loaded = [load_any(n, PROFILES) for n in list_names(PROFILES)]
    return [p for p in loaded if isinstance(p, Profile)]


def fake_digest(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def fake_sha(repo: str, revision: str) -> str:
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


class Resolvers:
    """Counting stand-ins for the registry and the hub; `fail` names refs that cannot resolve."""

    def __init__(self, salt: str = "", fail: set[str] | None = None, bad: str | None = None) -> None:
        self.salt = salt
        self.fail = fail or set()
        self.bad = bad
        self.calls: Counter[str] = Counter()

    def image(self, ref: str) -> str:
        self.calls[ref] += 1
        if ref in self.fail or "*" in self.fail:
            raise OperationFailed(f"cannot resolve {ref}: registry unreachable")
        return self.bad if self.bad is not None else fake_digest(ref + self.salt)

    def model(self, repo: str, revision: str) -> str:
        self.calls[f"{repo}@{revision}"] += 1
        if repo in self.fail or "*" in self.fail:
            raise OperationFailed(f"cannot resolve {repo}@{revision}: hub unreachable")
        return self.bad if self.bad is not None else fake_sha(repo + self.salt, revision)


def _lock(directory: Path, resolvers: Resolvers, profiles: list[Profile] | None = None) -> Any:
    return write_locks(
        profiles if profiles is not None else _profiles(),
        directory,
        image_resolver=resolvers.image,
        model_resolver=resolvers.model,
    )


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_unlocked_without_entries(tmp_path: Path) -> None:
    for profile in _profiles():
        pins = all_pins(profile, tmp_path)
        if profile.name == "local-tiny":
            assert lock_state(profile, tmp_path) == "local"
            assert {p.state for p in pins} == {"local"}
            continue
        assert lock_state(profile, tmp_path) == "unlocked", profile.name
        assert all(p.value is None for p in pins if p.state == "unlocked")


def _lock_file_problems(directory: Path) -> list[str]:
    """What is wrong with the lock files in `directory`, as `gh200 lock` would have written them."""
    problems = []
    for name, section, fields in (
        ("images.lock", "images", {"ref": None, "digest": DIGEST_RE}),
        ("models.lock", "models", {"repo": None, "revision": None, "sha": SHA_RE}),
    ):
        data = yaml.safe_load((directory / name).read_text())
        if not isinstance(data, dict) or data.get("schema") != 1 or not isinstance(data.get(section), dict):
            problems.append(f"{name}: not `schema: 1` with a `{section}:` mapping")
            continue
        for key, entry in data[section].items():
            for field, pattern in fields.items():
                value = entry.get(field) if isinstance(entry, dict) else None
                if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
                    problems.append(f"{name}: {key}.{field} is {value!r}")
    return problems


def _pins_match_entries(directory: Path) -> None:
    """Every pin reads as exactly what the files hold: an entry's value when present, else unlocked."""
    images = yaml.safe_load((directory / "images.lock").read_text())["images"] or {}
    models = yaml.safe_load((directory / "models.lock").read_text())["models"] or {}
    for profile in _profiles():
        for pin in all_pins(profile, directory):
            if pin.state == "local":
                continue
            entry = (images if pin.kind == "image" else models).get(pin.key)
            value = None if entry is None else entry["digest" if pin.kind == "image" else "sha"]
            assert pin.value == value, (profile.name, pin)
            assert pin.state == ("unlocked" if value is None else "locked"), (profile.name, pin)


def test_the_committed_locks_invent_nothing() -> None:
    """Whatever profiles/*.lock hold was resolved, and each profile reads exactly that.

    While the committed files are empty (they are resolved on a connected host) this says every
    registry image and hub model is unlocked; the check itself is shown to bite below.
    """
    assert _lock_file_problems(PROFILES) == []
    _pins_match_entries(PROFILES)


def test_the_lock_file_check_bites(tmp_path: Path) -> None:
    shutil.copy(PROFILES / "images.lock", tmp_path)
    shutil.copy(PROFILES / "models.lock", tmp_path)
    _lock(tmp_path, Resolvers())
    assert _lock_file_problems(tmp_path) == []
    _pins_match_entries(tmp_path)
    assert all(lock_state(p, tmp_path) in ("locked", "local") for p in _profiles())

    images = tmp_path / "images.lock"
    key = "vllm-openai-0.33.0-aarch64"
    data = yaml.safe_load(images.read_text())
    short = data["images"][key]["digest"][:20]
    data["images"][key]["digest"] = short
    images.write_text(yaml.safe_dump(data))
    assert _lock_file_problems(tmp_path) == [f"images.lock: {key}.digest is {short!r}"]
    # A malformed digest pins nothing: the profile reads as unlocked, never with the bad value.
    assert image_pin(load_profile("glm52-awq-mtp3", PROFILES), tmp_path).state == "unlocked"

    models = tmp_path / "models.lock"
    data = yaml.safe_load(models.read_text())
    first = next(iter(data["models"]))
    del data["models"][first]["sha"]
    models.write_text(yaml.safe_dump(data))
    assert f"models.lock: {first}.sha is None" in _lock_file_problems(tmp_path)
    models.write_text("models: {}\n")
    assert "models.lock: not `schema: 1` with a `models:` mapping" in _lock_file_problems(tmp_path)


def test_require_locked_names_the_missing_pin(tmp_path: Path) -> None:
    profile = load_profile("glm52-awq-mtp3", PROFILES)
    with pytest.raises(LockError) as err:
        require_locked(profile, tmp_path)
    line = err.value.one_line()
    assert "vllm-openai-0.33.0-aarch64" in line and "images.lock" in line and "gh200 lock" in line
    # With the image locked, the next missing pin is the model; then the graft's MTP delta.
    resolvers = Resolvers(fail={"cyankiwi/GLM-5.2-AWQ-INT4", "dnhkng/GLM-5.2-AWQ-INT4-FP8-MTP-delta"})
    _lock(tmp_path, resolvers, [profile])
    with pytest.raises(LockError, match=r"cyankiwi/GLM-5\.2-AWQ-INT4 .*models\.lock"):
        require_locked(profile, tmp_path)
    _lock(tmp_path, Resolvers(fail={"dnhkng/GLM-5.2-AWQ-INT4-FP8-MTP-delta"}), [profile])
    with pytest.raises(LockError, match=r"GLM-5\.2-AWQ-INT4-FP8-MTP-delta"):
        require_locked(profile, tmp_path)
    _lock(tmp_path, Resolvers(), [profile])
    require_locked(profile, tmp_path)
    assert lock_state(profile, tmp_path) == "locked"


def test_write_locks_writes_every_pin_once_then_reports_unchanged(tmp_path: Path) -> None:
    resolvers = Resolvers()
    result = _lock(tmp_path, resolvers)
    assert result.changed and not result.failed
    # One resolution per lock key, however many profiles share it.
    assert set(resolvers.calls.values()) == {1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.lock", "models.lock"]  # no temp files
    images = yaml.safe_load((tmp_path / "images.lock").read_text())
    models = yaml.safe_load((tmp_path / "models.lock").read_text())
    assert images["images"]["vllm-openai-0.33.0-aarch64"]["digest"] == fake_digest(
        "vllm/vllm-openai:v0.33.0-aarch64"
    )
    assert models["models"]["zai-org/GLM-5.2-FP8"]["sha"] == fake_sha("zai-org/GLM-5.2-FP8", "main")
    # Local images and generated models are pinned by content, not by a lock entry.
    assert "local-base-bookworm" not in images["images"]
    assert "local/tiny-llama-spm" not in models["models"]
    for profile in _profiles():
        if profile.name != "local-tiny":
            assert lock_state(profile, tmp_path) == "locked", profile.name
    before = _snapshot(tmp_path)
    inodes = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}

    again = _lock(tmp_path, Resolvers())
    assert not again.changed
    assert _snapshot(tmp_path) == before  # resolved_at is kept when nothing changed
    assert {p.name: p.stat().st_ino for p in tmp_path.iterdir()} == inodes


def test_a_changed_pin_is_replaced_by_rename(tmp_path: Path) -> None:
    _lock(tmp_path, Resolvers())
    inode = (tmp_path / "images.lock").stat().st_ino
    result = _lock(tmp_path, Resolvers(salt="-moved-tag"))
    assert result.changed
    # Written to a sibling and renamed over: a reader never sees half a file.
    assert (tmp_path / "images.lock").stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.lock", "models.lock"]
    entry = yaml.safe_load((tmp_path / "images.lock").read_text())["images"]["vllm-openai-0.33.0-aarch64"]
    assert entry["digest"] == fake_digest("vllm/vllm-openai:v0.33.0-aarch64-moved-tag")


def test_failing_resolver_leaves_existing_entries_untouched(tmp_path: Path) -> None:
    _lock(tmp_path, Resolvers())
    before = _snapshot(tmp_path)
    result = _lock(tmp_path, Resolvers(salt="-new", fail={"*"}))
    assert result.failed and not result.resolved and not result.changed
    assert _snapshot(tmp_path) == before
    # One failure among successes: the failed key keeps its old entry, the rest move on.
    result = _lock(tmp_path, Resolvers(salt="-new", fail={"zai-org/GLM-5.2-FP8"}))
    assert result.changed
    assert [ref for ref, _ in result.failed] == ["zai-org/GLM-5.2-FP8@main"]
    models = yaml.safe_load((tmp_path / "models.lock").read_text())["models"]
    assert models["zai-org/GLM-5.2-FP8"]["sha"] == fake_sha("zai-org/GLM-5.2-FP8", "main")
    assert models["cyankiwi/GLM-5.2-AWQ-INT4"]["sha"] == fake_sha("cyankiwi/GLM-5.2-AWQ-INT4-new", "main")


def test_failing_first_run_writes_nothing(tmp_path: Path) -> None:
    result = _lock(tmp_path, Resolvers(fail={"*"}))
    assert result.failed and not result.changed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [
        "latest",
        "sha256:abc",
        "sha256:" + "A" * 64,
        "0" * 64,
        "0" * 40 + "\n",
        "",
        "main",
        "sha256:" + "0" * 64 + " ",
    ],
)
def test_never_writes_a_value_that_is_not_a_digest_or_sha(tmp_path: Path, bad: str) -> None:
    result = _lock(tmp_path, Resolvers(bad=bad))
    assert not result.resolved
    # Every pin that needs resolving failed: 3 images (vllm, ubuntu), 7 model keys incl. the graft.
    assert len(result.failed) == len({(r, e) for r, e in result.failed})
    assert all("not a" in error for _, error in result.failed)
    assert not result.changed
    assert list(tmp_path.iterdir()) == []
    for profile in _profiles():
        assert lock_state(profile, tmp_path) in ("unlocked", "local")


def test_an_image_digest_is_not_a_model_sha(tmp_path: Path) -> None:
    """A resolver returning the other kind of pin is refused too."""
    profile = load_profile("glm52-awq", PROFILES)
    swapped = write_locks([profile], tmp_path, lambda ref: "0" * 40, lambda r, v: fake_digest(r))
    assert sorted(ref for ref, _ in swapped.failed) == [
        "cyankiwi/GLM-5.2-AWQ-INT4@main",
        "vllm/vllm-openai:v0.33.0-aarch64",
    ]
    assert not swapped.changed and list(tmp_path.iterdir()) == []
    assert lock_state(profile, tmp_path) == "unlocked"


def _write_lock(directory: Path, name: str, section: str, entries: object) -> None:
    (directory / name).write_text(yaml.safe_dump({"schema": 1, section: entries}))


def test_stale_or_hand_edited_entries_count_as_unlocked(tmp_path: Path) -> None:
    profile = load_profile("dsv4-flash-canada-mtp3", PROFILES)
    digest, sha = fake_digest("x"), fake_sha("x", "main")
    image = {"ref": profile.image.ref, "digest": digest}
    model = {"repo": profile.model.repo, "revision": "main", "sha": sha}
    stale_images = [
        {**image, "ref": "vllm/vllm-openai:v0.32.0-aarch64"},  # the tag moved since the lock
        {**image, "digest": "sha256:deadbeef"},  # typed by hand
        {**image, "digest": digest + "\n"},
        {"ref": profile.image.ref},
    ]
    stale_models = [
        {**model, "revision": "v2"},  # not the profile's revision
        {**model, "repo": "someone/else"},
        {**model, "sha": sha.upper()},
        {**model, "sha": sha[:12]},
    ]
    key_i, key_m = profile.image.lock_key, profile.model.lock_key
    for entry in stale_images:
        _write_lock(tmp_path, "images.lock", "images", {key_i: entry})
        _write_lock(tmp_path, "models.lock", "models", {key_m: model})
        assert image_pin(profile, tmp_path).state == "unlocked", entry
        assert model_pins(profile, tmp_path)[0].state == "locked"
    for entry in stale_models:
        _write_lock(tmp_path, "images.lock", "images", {key_i: image})
        _write_lock(tmp_path, "models.lock", "models", {key_m: entry})
        assert image_pin(profile, tmp_path).state == "locked"
        assert model_pins(profile, tmp_path)[0].state == "unlocked", entry
    _write_lock(tmp_path, "models.lock", "models", {key_m: model})
    assert lock_state(profile, tmp_path) == "locked"
    # The tag is dropped: the digest alone names the image (one form for profiles and image builds).
    assert profile.image.ref == "vllm/vllm-openai:v0.33.0-aarch64"
    assert image_pin(profile, tmp_path).pinned_ref == f"vllm/vllm-openai@{digest}"
    assert model_pins(profile, tmp_path)[0].pinned_ref == f"{profile.model.repo}@{sha}"


@pytest.mark.parametrize(
    "content",
    [
        "images: [not, a, mapping]\n",
        "{{{\n",
        "- a list\n",
    ],
)
def test_a_corrupt_lock_file_is_one_line(tmp_path: Path, content: str) -> None:
    (tmp_path / "images.lock").write_text(content)
    profile = load_profile("glm52-awq", PROFILES)
    with pytest.raises(LockError) as err:
        image_pin(profile, tmp_path)
    assert "images.lock" in err.value.one_line() and "(fix: " in err.value.one_line()


def test_a_junk_entry_is_unlocked_and_lock_repairs_it(tmp_path: Path) -> None:
    profile = load_profile("glm52-awq", PROFILES)
    _write_lock(tmp_path, "images.lock", "images", {profile.image.lock_key: "sha256:" + "0" * 64})
    _write_lock(tmp_path, "models.lock", "models", {profile.model.lock_key: ["x"]})
    assert lock_state(profile, tmp_path) == "unlocked"
    result = _lock(tmp_path, Resolvers(), [profile])
    assert result.changed and not result.failed
    assert lock_state(profile, tmp_path) == "locked"


def test_locked_container_spec_pulls_by_digest(pinned_bundle: Path) -> None:
    lock_dir = pinned_bundle / "profiles"
    _lock(lock_dir, Resolvers())
    profile = load_profile("glm52-awq-mtp3")
    spec = container_spec(profile)
    digest = fake_digest("vllm/vllm-openai:v0.33.0-aarch64")
    # name@digest, the form the image builder uses too (one reader, one form): the digest alone
    # decides what is pulled, and not every engine or builder accepts a tag beside a digest.
    pinned = f"vllm/vllm-openai@{digest}"
    assert spec["image"] == {"base": pinned, "state": "locked", "recipe": "vllm"}
    assert spec["labels"]["io.gh200.image"] == pinned
    assert spec["labels"]["io.gh200.model-revision"] == fake_sha("cyankiwi/GLM-5.2-AWQ-INT4", "main")


# --- `gh200 lock` end to end, models resolved through the checkpoints suite's stand-in hub ---


def _hubserver_module() -> ModuleType:
    path = REPO / "tests" / "unit" / "checkpoints" / "ckpt_hubserver.py"
    if not path.is_file():
        pytest.skip(f"needs the stand-in hub {path.relative_to(REPO)} (checkpoints suite)")
    if "ckpt_hubserver" in sys.modules:
        return sys.modules["ckpt_hubserver"]
    spec = importlib.util.spec_from_file_location("ckpt_hubserver", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ckpt_hubserver"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def hub() -> Iterator[Any]:
    server = _hubserver_module().HubServer().start()
    try:
        yield server
    finally:
        server.stop()


HUB_PROFILE = """\
schema: 1
name: hub-tiny
description: a GGUF served from the stand-in hub, on the local base image
source: test suite
engine: llama_cpp
host: local
image: {ref: "localhost/gh200-base:bookworm", lock_key: local-base-bookworm}
model:
  repo: example/tiny-gguf
  revision: main
  lock_key: example/tiny-gguf
  served_name: tiny
  format: gguf
  gguf_file: tiny.gguf
settings: {threads: 1}
port: 18090
"""


@pytest.fixture()
def hub_bundle(
    tmp_path: Path, gh200: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """A bundle (GH200_HOME) holding hub-tiny plus the hosts; returns a gh200 runner bound to it
    (in-process through main(); `subprocess=True` runs the installed script)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(PROFILES / "hosts", bundle / "profiles" / "hosts")
    (bundle / "profiles" / "hub-tiny.yaml").write_text(HUB_PROFILE)
    env = {
        "GH200_HOME": str(bundle),
        "GH200_CACHE": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
    }

    for var in ("HF_TOKEN", "GH200_HF_TOKEN_FILE", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str, subprocess: bool = False, **extra: str) -> Any:
        if subprocess:
            return run_gh200(list(args), {**os.environ, **env, **extra})
        return gh200(list(args), {**env, **extra})

    run.bundle = bundle  # type: ignore[attr-defined]
    return run


def test_gh200_lock_end_to_end_against_a_stand_in_hub(hub: Any, hub_bundle: Callable[..., Any]) -> None:
    commit = hashlib.sha1(b"tiny-gguf commit 1").hexdigest()
    repo = hub.add_repo("example/tiny-gguf", commit, {"tiny.gguf": b"GGUF" + bytes(60)})
    repo.branches["main"] = commit
    lock_file = hub_bundle.bundle / "profiles" / "models.lock"  # type: ignore[attr-defined]

    show = hub_bundle("profiles", "show", "hub-tiny")
    assert show.code == 0 and "unlocked" in show.stdout
    refused = hub_bundle("profiles", "render", "hub-tiny", "--locked")
    assert refused.code == 2 and "example/tiny-gguf is unlocked" in refused.stderr

    first = hub_bundle("lock", "hub-tiny", "--json", HF_ENDPOINT=hub.url)
    assert first.code == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["changed"] is True and report["failed"] == []
    assert [(p["key"], p["pinned"]) for p in report["resolved"]] == [("example/tiny-gguf", commit)]
    entry = yaml.safe_load(lock_file.read_text())["models"]["example/tiny-gguf"]
    assert (entry["repo"], entry["revision"], entry["sha"]) == ("example/tiny-gguf", "main", commit)

    second = hub_bundle("lock", "hub-tiny", "--json", HF_ENDPOINT=hub.url)
    assert second.code == 0 and json.loads(second.stdout)["changed"] is False

    shown = json.loads(hub_bundle("profiles", "show", "hub-tiny", "--json").stdout)
    assert shown["lock"] == "locked"
    assert {p["key"]: p["pinned"] for p in shown["pins"]}["example/tiny-gguf"] == commit
    assert hub_bundle("profiles", "render", "hub-tiny", "--locked").code == 0


def test_gh200_lock_reports_a_missing_repo_and_keeps_the_lock(
    hub: Any, hub_bundle: Callable[..., Any]
) -> None:
    lock_file = hub_bundle.bundle / "profiles" / "models.lock"  # type: ignore[attr-defined]
    run = hub_bundle("lock", "hub-tiny", "--json", HF_ENDPOINT=hub.url)
    assert run.code == 1, run.stderr
    assert "Traceback" not in run.stderr
    report = json.loads(run.stdout)
    assert report["changed"] is False and report["resolved"] == []
    assert [f["ref"] for f in report["failed"]] == ["example/tiny-gguf@main"]
    assert "repository not found" in report["failed"][0]["error"]
    assert not lock_file.exists()


def test_gh200_lock_with_the_hub_unreachable(hub_bundle: Callable[..., Any]) -> None:
    """A closed port on 127.0.0.1: one failure line per pin, exit 1, no traceback."""
    run = hub_bundle("lock", "hub-tiny", subprocess=True, HF_ENDPOINT="http://127.0.0.1:9")
    assert run.code == 1
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("failed example/tiny-gguf@main: ")
