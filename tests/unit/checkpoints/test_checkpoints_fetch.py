"""fetch (and remote inspect) with the real huggingface_hub client against a local stand-in hub.

No hub is reachable here; `ckpt_hubserver` answers the routes huggingface_hub 2.x calls (model_info
with file metadata, the tree listing, HEAD/GET on /resolve with ETag, X-Repo-Commit, X-Linked-*,
Range) on 127.0.0.1, and the client is pointed at it with HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ckpt_hubserver import HubServer, git_blob_id
from ckpt_testlib import GH200, run_cli

from gh200.checkpoints import fetch as fetch_mod
from gh200.checkpoints import hub
from gh200.checkpoints.fetch import CorruptDownload, NotEnoughDisk, fetch
from gh200.checkpoints.inspect import inspect_checkpoint
from gh200.checkpoints.profile_fetch import fetch_profile
from gh200.checkpoints.verify import MANIFEST_NAME, verify_dir
from gh200.errors import BadInput, LockError
from gh200.paths import profiles_dir

BASE_REPO = "cyankiwi/GLM-5.2-AWQ-INT4"
DELTA_REPO = "dnhkng/GLM-5.2-AWQ-INT4-FP8-MTP-delta"
FP8_REPO = "zai-org/GLM-5.2-FP8"
C1 = "1" * 40
C2 = "2" * 40
C3 = "3" * 40
SHARD2 = "model-00002-of-00004.safetensors"


@pytest.fixture
def endpoint(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    return hub_server


def ref(repo: str = BASE_REPO, commit: str = C1) -> hub.RepoRef:
    return hub.parse_ref(f"{repo}@{commit}")


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def test_fetch_checks_hashes_writes_manifest_and_reruns_unchanged(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    dest = tmp_path / "models" / "base"
    result = fetch(ref(), None, dest).as_dict()
    assert result["changed"] is True and result["files"] == 10
    assert files_of(dest) == files_of(tiny["base"])
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["repo"] == BASE_REPO and manifest["revision"] == C1
    for rel, info in manifest["files"].items():
        assert info["sha256"] == hashlib.sha256((tiny["base"] / rel).read_bytes()).hexdigest()
        assert info["lfs"] == rel.endswith(".safetensors")
    assert not (dest / ".cache").exists()
    assert not list(dest.parent.glob(".*.partial"))
    gets = dict(endpoint.gets)
    again = fetch(ref(), None, dest).as_dict()
    assert again["changed"] is False and again["status"] == "unchanged"
    assert dict(endpoint.gets) == gets  # nothing downloaded again
    report = verify_dir(dest)
    assert report.ok, report.problems
    assert report.files_hashed == 10


def test_default_store_is_gh200_models(endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path) -> None:
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"])
    result = fetch(ref(DELTA_REPO, C2))
    assert result.path == tmp_path / "models" / "dnhkng--GLM-5.2-AWQ-INT4-FP8-MTP-delta"


def test_only_the_chosen_files_are_fetched(endpoint: HubServer, tmp_path: Path) -> None:
    files = {
        "UD-IQ2_XXS/GLM-5.2-UD-IQ2_XXS-00001-of-00002.gguf": b"a" * 3000,
        "UD-IQ2_XXS/GLM-5.2-UD-IQ2_XXS-00002-of-00002.gguf": b"b" * 2000,
        "Q4_K_M/GLM-5.2-Q4_K_M-00001-of-00001.gguf": b"c" * 5000,
        "README.md": b"# GLM\n",
    }
    endpoint.add_repo("unsloth/GLM-5.2-GGUF", C1, files)
    dest = tmp_path / "gguf"
    result = fetch(ref("unsloth/GLM-5.2-GGUF"), ["UD-IQ2_XXS/*"], dest)
    assert result.files == 2
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.gguf")) == sorted(
        k for k in files if k.startswith("UD-")
    )
    assert endpoint.gets["Q4_K_M/GLM-5.2-Q4_K_M-00001-of-00001.gguf"] == 0
    with pytest.raises(BadInput, match="no file matches"):
        fetch(ref("unsloth/GLM-5.2-GGUF"), ["IQ1_S/*"], tmp_path / "none")


def test_free_disk_is_checked_before_downloading(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    real = shutil.disk_usage

    def small(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1024, 1024)

    monkeypatch.setattr(fetch_mod.shutil, "disk_usage", small)
    with pytest.raises(NotEnoughDisk, match=r"GiB still to download .* GiB free") as err:
        fetch(ref(), None, tmp_path / "base")
    assert err.value.exit_code == 1 and "GH200_MODELS" in (err.value.fix or "")
    assert sum(endpoint.gets.values()) == 0
    assert not (tmp_path / "base").exists()


def test_a_corrupt_download_is_caught_removed_and_refetched(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.faults.corrupt.add(SHARD2)
    dest = tmp_path / "base"
    with pytest.raises(CorruptDownload, match=SHARD2):
        fetch(ref(), None, dest)
    assert not dest.exists()
    partial = tmp_path / ".base.partial"
    assert not (partial / SHARD2).exists()
    assert (partial / "model-00001-of-00004.safetensors").exists()
    endpoint.faults.corrupt.clear()
    assert fetch(ref(), None, dest).changed
    assert endpoint.gets[SHARD2] == 2
    assert endpoint.gets["model-00001-of-00004.safetensors"] == 1
    assert files_of(dest) == files_of(tiny["base"])


def test_a_dropped_connection_resumes_with_a_range_request(endpoint: HubServer, tmp_path: Path) -> None:
    # huggingface_hub hands bytes to the file in 10 MiB chunks: drop the connection past the first one.
    blob = os.urandom(12 * 2**20)
    endpoint.add_repo(DELTA_REPO, C2, {"model.safetensors": blob, "config.json": b"{}"})
    endpoint.faults.drop_after["model.safetensors"] = 11 * 2**20
    dest = tmp_path / "delta"
    fetch(ref(DELTA_REPO, C2), None, dest)
    resumed = [
        int(rng.split("=")[1].rstrip("-")) for path, rng in endpoint.ranges if path == "model.safetensors"
    ]
    assert resumed and resumed[0] >= 10 * 2**20
    assert endpoint.gets["model.safetensors"] == 2
    assert (dest / "model.safetensors").read_bytes() == blob


def test_a_killed_fetch_resumes_without_refetching_finished_files(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    stall = endpoint.faults.stall[SHARD2] = threading.Event()
    dest = tmp_path / "base"
    env = dict(os.environ, HF_ENDPOINT=endpoint.url)
    child = subprocess.Popen(
        [GH200, "models", "fetch", f"{BASE_REPO}@{C1}", "--out", str(dest), "--workers", "1", "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert endpoint.faults.stalled.wait(60), "the download never reached the stalled file"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
        stall.set()
    assert not dest.exists()
    partial = tmp_path / ".base.partial"
    assert (partial / "model-00001-of-00004.safetensors").is_file()
    assert not (partial / SHARD2).exists()
    del endpoint.faults.stall[SHARD2]
    result = fetch(ref(), None, dest)
    assert result.changed
    assert endpoint.gets["model-00001-of-00004.safetensors"] == 1  # finished before the kill: not again
    assert endpoint.gets[SHARD2] == 2
    assert endpoint.gets["model-00003-of-00004.safetensors"] == 1
    assert result.bytes_downloaded < result.bytes_total
    assert files_of(dest) == files_of(tiny["base"])
    assert not list((dest).rglob("*.incomplete"))


def test_token_from_env_or_file_is_sent_and_never_printed(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    secret = "hf_gh200TestSecretToken"
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"], token=secret)
    target = f"{DELTA_REPO}@{C2}"
    denied = run_cli(
        "models", "fetch", target, "--out", str(tmp_path / "a"), env={"HF_ENDPOINT": endpoint.url}
    )
    assert denied.returncode == 2, denied.stderr
    assert denied.stderr.startswith("error: ") and "repository not found" in denied.stderr
    assert "Traceback" not in denied.stderr
    ok = run_cli(
        "models",
        "fetch",
        target,
        "--out",
        str(tmp_path / "a"),
        "--json",
        env={"HF_ENDPOINT": endpoint.url, "HF_TOKEN": secret},
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["changed"] is True
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    via_file = run_cli(
        "models",
        "fetch",
        target,
        "--out",
        str(tmp_path / "b"),
        "--token-file",
        str(token_file),
        env={"HF_ENDPOINT": endpoint.url},
    )
    assert via_file.returncode == 0, via_file.stderr
    assert f"Bearer {secret}" in endpoint.auth_seen
    # LFS bytes came from the CDN origin, which never saw the token (as on the real hub).
    assert endpoint.cdn_auth_seen and all(a is None for a in endpoint.cdn_auth_seen)
    for res in (denied, ok, via_file):
        assert secret not in res.stdout + res.stderr
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file() and not path.name.endswith(".safetensors"):
            assert secret not in path.read_text()


def test_refs_must_be_pinned_and_exist(endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    with pytest.raises(BadInput, match="not a pinned commit sha"):
        hub.parse_ref(f"{BASE_REPO}@main")
    with pytest.raises(BadInput, match="OWNER/NAME@REVISION"):
        hub.parse_ref(BASE_REPO)
    with pytest.raises(hub.HubNotFound, match="revision not found"):
        fetch(ref(BASE_REPO, C3), None, tmp_path / "x")
    with pytest.raises(hub.HubNotFound, match="repository not found"):
        fetch(ref("nobody/nothing", C1), None, tmp_path / "x")
    res = run_cli("models", "fetch", f"{BASE_REPO}@main", env={"HF_ENDPOINT": endpoint.url})
    assert res.returncode == 2 and "40 hex" in res.stderr


def test_unreachable_hub_is_a_failed_operation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = HubServer()  # bound but never serving: take its port, then close it
    url = server.url
    server.httpd.server_close()
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(hub.HubError) as err:
        fetch(ref(), None, tmp_path / "x")
    assert err.value.exit_code == 1


def test_existing_directories_are_respected(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(BadInput, match="was not fetched from"):
        fetch(ref(), None, mine)
    assert (mine / "notes.txt").read_text() == "keep"
    dest = tmp_path / "base"
    fetch(ref(), None, dest)
    # The hub moves on: a new commit changes one shard.
    files = {str(p.relative_to(tiny["base"])): p.read_bytes() for p in tiny["base"].iterdir() if p.is_file()}
    changed = bytearray(files[SHARD2])
    changed[-1] ^= 0xFF
    files[SHARD2] = bytes(changed)
    endpoint.repos[BASE_REPO].files = files
    endpoint.repos[BASE_REPO].commit = C2
    with pytest.raises(BadInput, match=f"holds {BASE_REPO}@{C1}, not {C2}") as err:
        fetch(ref(BASE_REPO, C2), None, dest)
    assert "--force" in (err.value.fix or "")
    before = dict(endpoint.gets)
    result = fetch(ref(BASE_REPO, C2), None, dest, force=True)
    assert result.changed
    assert endpoint.gets[SHARD2] == before[SHARD2] + 1
    assert endpoint.gets["model-00001-of-00004.safetensors"] == before["model-00001-of-00004.safetensors"]
    assert (dest / SHARD2).read_bytes() == bytes(changed)
    assert json.loads((dest / MANIFEST_NAME).read_text())["revision"] == C2


def test_remote_inspect_reads_headers_only(endpoint: HubServer, tiny: dict[str, Path]) -> None:
    endpoint.add_dir(FP8_REPO, C1, tiny["fp8"])
    remote = inspect_checkpoint(f"{FP8_REPO}@{C1}")
    local = inspect_checkpoint(tiny["fp8"])
    assert remote.model_dump(exclude={"source", "revision"}) == local.model_dump(
        exclude={"source", "revision"}
    )
    assert remote.revision == C1
    assert sum(endpoint.gets[s] for s in endpoint.gets if s.endswith(".safetensors")) == 5
    assert all(rng.startswith("bytes=0-") for _, rng in endpoint.ranges)
    res = run_cli("models", "inspect", f"{FP8_REPO}@{C1}", "--json", env={"HF_ENDPOINT": endpoint.url})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["mtp_bytes"] == local.mtp_bytes > 0


def _profiles(tmp_path: Path, locks: dict[str, str], extra: dict[str, str] | None = None) -> Path:
    root = tmp_path / "profiles"
    shutil.copytree(profiles_dir(), root)
    models = {
        key: {"repo": key, "revision": "main", "sha": sha, "resolved_at": "2026-01-01T00:00:00Z"}
        for key, sha in locks.items()
    }
    (root / "models.lock").write_text(yaml.safe_dump({"schema": 1, "models": models}))
    for name, text in (extra or {}).items():
        (root / f"{name}.yaml").write_text(text)
    return root


def test_fetch_profile_fetches_base_and_delta_and_grafts(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"])
    profiles = _profiles(tmp_path, {BASE_REPO: C1, DELTA_REPO: C2})
    store = tmp_path / "store"
    result = fetch_profile("glm52-awq-mtp3", profiles_directory=profiles, store=store)
    final = store / "cyankiwi--GLM-5.2-AWQ-INT4--mtp-graft"
    assert result["model_dir"] == str(final)
    assert result["changed"] is True and result["graft"]["status"] == "grafted"
    assert [r["repo"] for r in result["fetched"]] == [BASE_REPO, DELTA_REPO]
    assert verify_dir(final).ok
    assert verify_dir(store / "cyankiwi--GLM-5.2-AWQ-INT4").ok
    again = fetch_profile("glm52-awq-mtp3", profiles_directory=profiles, store=store)
    assert again["changed"] is False and again["status"] == "unchanged"


def test_fetch_profile_from_the_full_fp8_takes_only_the_mtp_shards(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.add_dir(FP8_REPO, C3, tiny["fp8"])
    extra = {
        "glm52-awq-mtp3-from-fp8": (
            "schema: 1\nextends: glm52-awq-mtp3\nname: glm52-awq-mtp3-from-fp8\n"
            "model:\n  graft:\n    mtp_from: zai-org/GLM-5.2-FP8\n    revision: main\n"
            "    lock_key: zai-org/GLM-5.2-FP8\n    mtp_layers: 1\n"
        )
    }
    profiles = _profiles(tmp_path, {BASE_REPO: C1, FP8_REPO: C3}, extra)
    result = fetch_profile("glm52-awq-mtp3-from-fp8", profiles_directory=profiles, store=tmp_path / "store")
    fetched = sorted(p.name for p in (tmp_path / "store" / "zai-org--GLM-5.2-FP8").glob("*.safetensors"))
    assert fetched == ["model-00004-of-00005.safetensors", "model-00005-of-00005.safetensors"]
    assert endpoint.gets["model-00001-of-00005.safetensors"] == 0
    assert result["graft"]["mtp_tensors"] == 57
    assert verify_dir(Path(result["model_dir"])).ok


def test_fetch_profile_needs_a_lock(endpoint: HubServer, tmp_path: Path) -> None:
    profiles = _profiles(tmp_path, {})
    with pytest.raises(LockError, match=r"models\.lock"):
        fetch_profile("glm52-awq", profiles_directory=profiles, store=tmp_path / "store")
    with pytest.raises(BadInput, match="generated on this machine"):
        fetch_profile("local-tiny", profiles_directory=profiles, store=tmp_path / "store")
    res = run_cli("models", "fetch", "no-such-profile")
    assert res.returncode == 2 and res.stderr.startswith("error: ")
    res = run_cli("models", "fetch", "glm52-awq", "--include", "*.json")
    assert res.returncode == 2 and "--include/--out apply to OWNER/NAME@COMMIT" in res.stderr


def test_progress_reaches_the_total(endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    phases: list[tuple[str, int]] = []
    seen: list[int] = []
    fetch(
        ref(), None, tmp_path / "base", on_phase=lambda p, t: phases.append((p, t)), on_progress=seen.append
    )
    total = sum(p.stat().st_size for p in tiny["base"].iterdir())
    assert phases == [("download", total), ("sha256", total)]
    assert seen[-1] == total


def _shorten(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


REPAIRS: list[tuple[str, str, Any, str]] = [
    ("truncated shard", SHARD2, _shorten, "bytes, the hub has"),
    ("deleted shard", SHARD2, Path.unlink, "missing"),
    ("truncated config (a small, non-LFS file)", "config.json", _shorten, "bytes, the hub has"),
    ("overgrown tokenizer", "tokenizer.json", lambda p: p.write_bytes(p.read_bytes() + b" "), "the hub has"),
]


@pytest.mark.parametrize("case", REPAIRS, ids=[r[0] for r in REPAIRS])
def test_a_damaged_fetch_is_repaired_not_unchanged(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path, case: tuple[str, str, Any, str]
) -> None:
    _label, rel, spoil, why = case
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    dest = tmp_path / "base"
    fetch(ref(), None, dest)
    spoil(dest / rel)
    before = dict(endpoint.gets)
    result = fetch(ref(), None, dest)
    assert result.changed and result.status == "repaired"
    assert (
        len(result.repaired) == 1 and result.repaired[0].startswith(f"{rel}: ") and why in result.repaired[0]
    )
    assert result.as_dict()["repaired"] == result.repaired
    # Only the damaged file came again; the others kept their checked manifest entries.
    assert {k: v - before.get(k, 0) for k, v in endpoint.gets.items() if v != before.get(k, 0)} == {rel: 1}
    assert result.bytes_downloaded == (tiny["base"] / rel).stat().st_size
    assert files_of(dest) == files_of(tiny["base"])
    assert verify_dir(dest).ok
    assert not list(tmp_path.glob(".*.partial"))
    assert fetch(ref(), None, dest).status == "unchanged"


@pytest.mark.parametrize(("rel", "key"), [(SHARD2, "sha256"), ("config.json", "git_oid"), (SHARD2, "size")])
def test_a_manifest_that_disagrees_with_the_hub_is_not_unchanged(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path, rel: str, key: str
) -> None:
    """Unchanged needs the recorded size and digest (sha256; git blob id for small files) to be the hub's."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    dest = tmp_path / "base"
    fetch(ref(), None, dest)
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    right = manifest["files"][rel][key]
    manifest["files"][rel][key] = right + 1 if key == "size" else "0" * len(right)
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = fetch(ref(), None, dest)
    assert result.changed and result.status == "fetched"
    assert json.loads((dest / MANIFEST_NAME).read_text())["files"][rel][key] == right
    assert verify_dir(dest).ok


def test_a_truncated_base_shard_is_repaired_through_fetch_and_graft(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """The graft links the base shard: truncating it damages both; fetch and graft each repair theirs."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"])
    profiles = _profiles(tmp_path, {BASE_REPO: C1, DELTA_REPO: C2})
    store = tmp_path / "store"
    fetch_profile("glm52-awq-mtp3", profiles_directory=profiles, store=store)
    base, final = store / "cyankiwi--GLM-5.2-AWQ-INT4", store / "cyankiwi--GLM-5.2-AWQ-INT4--mtp-graft"
    _shorten(base / SHARD2)
    res = run_cli(
        "models",
        "fetch",
        "glm52-awq-mtp3",
        env={"HF_ENDPOINT": endpoint.url, "GH200_HOME": str(profiles.parent), "GH200_MODELS": str(store)},
    )
    assert res.returncode == 0, res.stderr
    text = res.stdout + res.stderr
    assert f"repaired {base}/{SHARD2}: " in text and f"repaired {final}/{SHARD2}: " in text, text
    assert (final / SHARD2).read_bytes() == (tiny["base"] / SHARD2).read_bytes()
    assert verify_dir(final).ok and verify_dir(base).ok


def test_the_result_counts_files_and_bytes_as_fetched(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Every figure of the result (what `models fetch --json` prints), counted from the files themselves."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    dest = tmp_path / "base"
    sizes = {rel: len(data) for rel, data in files_of(tiny["base"]).items()}
    first = fetch(ref(), None, dest).as_dict()
    seconds = first.pop("seconds")
    assert isinstance(seconds, float) and 0 <= seconds < 600 and round(seconds, 3) == seconds  # ms
    assert first == {
        "changed": True,
        "status": "fetched",
        "repaired": [],
        "repo": BASE_REPO,
        "revision": C1,
        "path": str(dest),
        "files": len(sizes),
        "bytes": sum(sizes.values()),
        "bytes_downloaded": sum(sizes.values()),
    }
    again = fetch(ref(), None, dest).as_dict()
    del again["seconds"]
    assert again == {**first, "changed": False, "status": "unchanged", "bytes_downloaded": 0}
    (dest / "tokenizer.json").unlink()
    repaired = fetch(ref(), None, dest).as_dict()
    del repaired["seconds"]
    assert repaired == {
        **first,
        "status": "repaired",
        "repaired": ["tokenizer.json: missing"],
        "bytes_downloaded": sizes["tokenizer.json"],
    }


@pytest.mark.parametrize("spare", [0, -1])
def test_free_disk_must_hold_what_is_missing_plus_the_margin(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spare: int
) -> None:
    """Exactly the missing bytes plus 1 GiB free is enough; one byte less is refused before any download."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    need = sum(len(data) for data in files_of(tiny["base"]).values())
    real = shutil.disk_usage

    def exact(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.used, need + fetch_mod.DISK_MARGIN_BYTES + spare)

    monkeypatch.setattr(fetch_mod.shutil, "disk_usage", exact)
    if spare == 0:
        assert fetch(ref(), None, tmp_path / "base").status == "fetched"
        return
    with pytest.raises(NotEnoughDisk) as err:
        fetch(ref(), None, tmp_path / "base")
    free = (need + fetch_mod.DISK_MARGIN_BYTES - 1) / 2**30
    assert err.value.one_line() == (
        f"{tmp_path}: {need / 2**30:.1f} GiB still to download (+1 GiB margin), {free:.1f} GiB free "
        "(fix: free space, or set GH200_MODELS (or --out) to a larger filesystem)"
    )
    assert sum(endpoint.gets.values()) == 0


def test_each_refusal_of_an_existing_directory_is_one_line_with_its_fix(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(BadInput) as err:
        fetch(ref(), None, mine)
    assert err.value.one_line() == (
        f"{mine} exists and was not fetched from {BASE_REPO} (fix: remove it or choose another --out)"
    )
    dest = tmp_path / "base"
    fetch(ref(), None, dest)
    endpoint.add_dir("someone/else", C1, tiny["base"])
    with pytest.raises(BadInput) as err:
        fetch(ref("someone/else"), None, dest)
    assert err.value.one_line() == (
        f"{dest} exists and was not fetched from someone/else (fix: remove it or choose another --out)"
    )
    endpoint.repos[BASE_REPO].commit = C2
    with pytest.raises(BadInput) as err:
        fetch(ref(BASE_REPO, C2), None, dest)
    assert err.value.one_line() == (
        f"{dest} holds {BASE_REPO}@{C1}, not {C2} "
        "(fix: pass --force to replace it (unchanged files are kept), or choose another --out)"
    )
    partial = tmp_path / ".base.partial"
    partial.mkdir()
    with pytest.raises(BadInput) as err:
        fetch(ref(BASE_REPO, C2), None, dest, force=True)
    assert err.value.one_line() == (
        f"{dest} and {partial} both exist (fix: remove {partial} (an interrupted fetch) and re-run)"
    )
    assert json.loads((dest / MANIFEST_NAME).read_text())["revision"] == C1  # nothing moved
    with pytest.raises(BadInput) as err:
        fetch(ref(BASE_REPO, C2), ["IQ1_S/*"], tmp_path / "none")
    assert err.value.one_line() == (
        f"{BASE_REPO}@{C2}: no file matches ['IQ1_S/*'] (fix: check the profile's model.files, "
        "or pass --include PATTERN (e.g. 'UD-IQ2_XXS/*'))"
    )


@pytest.mark.parametrize("bars_were_off", [False, True])
def test_a_fetch_leaves_huggingface_hubs_logging_and_progress_bars_as_it_found_them(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path, bars_were_off: bool
) -> None:
    import logging

    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"])
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    seen: list[tuple[int, bool]] = []
    import huggingface_hub

    real_snapshot = huggingface_hub.snapshot_download

    def watch(*args: Any, **kwargs: Any) -> Any:
        seen.append((logger.level, are_progress_bars_disabled()))
        return real_snapshot(*args, **kwargs)

    try:
        logger.setLevel(logging.INFO)
        if bars_were_off:
            disable_progress_bars()
        else:
            enable_progress_bars()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(huggingface_hub, "snapshot_download", watch)
            fetch(ref(DELTA_REPO, C2), None, tmp_path / "delta")
        assert seen == [(logging.ERROR, True)]  # quiet while downloading
        assert logger.level == logging.INFO
        assert are_progress_bars_disabled() is bars_were_off
    finally:
        logger.setLevel(level)
        enable_progress_bars()


def test_a_file_replaced_by_a_directory_is_missing_and_repaired(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    dest = tmp_path / "base"
    fetch(ref(), None, dest)
    (dest / "tokenizer.json").unlink()
    (dest / "tokenizer.json").mkdir()
    result = fetch(ref(), None, dest)
    assert result.status == "repaired" and result.repaired == ["tokenizer.json: missing"]
    assert files_of(dest) == files_of(tiny["base"])


def test_progress_while_downloading_counts_finished_files_and_partial_downloads(tmp_path: Path) -> None:
    partial = tmp_path / ".x.partial"
    meta = partial / ".cache" / "huggingface" / "download"
    (meta / "sub").mkdir(parents=True)
    (partial / "a.safetensors").write_bytes(b"a" * 100)
    (partial / "sub").mkdir()
    (partial / "sub" / "b.json").write_bytes(b"b" * 10)
    (meta / "x1.incomplete").write_bytes(b"x" * 7)
    (meta / "sub" / "x2.incomplete").write_bytes(b"x" * 5)
    (meta / "a.safetensors.metadata").write_bytes(b"m" * 1000)  # not a download in progress
    wanted = [
        fetch_mod.RemoteFile("a.safetensors", 100, "0" * 64, None),
        fetch_mod.RemoteFile("sub/b.json", 10, None, "1" * 40),
        fetch_mod.RemoteFile("not-yet.safetensors", 50, "2" * 64, None),
    ]
    assert fetch_mod._bytes_on_disk(partial, wanted) == 100 + 10 + 7 + 5
    assert fetch_mod._bytes_on_disk(tmp_path / "nothing", wanted) == 0


def test_a_new_commit_with_the_same_files_is_not_unchanged(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """The manifest must name this revision: identical files under another commit are not "unchanged"."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    dest = tmp_path / "base"
    fetch(ref(), None, dest)
    endpoint.repos[BASE_REPO].commit = C2  # same files, new commit
    with pytest.raises(BadInput, match=f"holds {BASE_REPO}@{C1}, not {C2}"):
        fetch(ref(BASE_REPO, C2), None, dest)
    result = fetch(ref(BASE_REPO, C2), None, dest, force=True)
    assert result.status == "fetched" and result.bytes_downloaded == 0  # every file already complete
    assert json.loads((dest / MANIFEST_NAME).read_text())["revision"] == C2


@pytest.mark.parametrize("manifest", ["[]", '"x"', "{broken"])
def test_a_directory_whose_manifest_is_not_an_object_is_not_ours(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path, manifest: str
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    dest = tmp_path / "base"
    fetch(ref(), None, dest)
    (dest / MANIFEST_NAME).write_text(manifest)
    with pytest.raises(BadInput, match=f"exists and was not fetched from {BASE_REPO}"):
        fetch(ref(), None, dest)
    assert (dest / MANIFEST_NAME).read_text() == manifest


def test_files_the_new_revision_dropped_go_with_their_empty_folders(
    endpoint: HubServer, tmp_path: Path
) -> None:
    files = {
        "config.json": b"{}",
        "extra/deep/notes.txt": b"old notes",
        "extra/keep.txt": b"kept",
        "tokenizer.model": b"x" * 64,
    }
    endpoint.add_repo("o/m", C1, files)
    dest = tmp_path / "m"
    fetch(ref("o/m", C1), None, dest)
    assert (dest / "extra/deep/notes.txt").read_bytes() == b"old notes"
    endpoint.repos["o/m"].files = {k: v for k, v in files.items() if k != "extra/deep/notes.txt"}
    endpoint.repos["o/m"].commit = C2
    fetch(ref("o/m", C2), None, dest, force=True)
    on_disk = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert on_disk == sorted([MANIFEST_NAME, "config.json", "extra", "extra/keep.txt", "tokenizer.model"])
    assert verify_dir(dest).ok


# In-process scenarios (the CLI subprocess tests above run the installed package, not a mutated copy).


def test_a_private_repo_needs_the_token_for_the_listing_and_the_download(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    secret = "hf_gh200InProcessSecret"
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"], token=secret)
    with pytest.raises(hub.HubNotFound) as err:
        fetch(ref(DELTA_REPO, C2), None, tmp_path / "a")
    assert err.value.one_line() == (
        f"{DELTA_REPO}@{C2}: repository not found (or private) "
        "(fix: check the repo name; set HF_TOKEN for private repos)"
    )
    asked = len(endpoint.auth_seen)
    result = fetch(ref(DELTA_REPO, C2), None, tmp_path / "a", token=secret)
    assert result.status == "fetched" and files_of(tmp_path / "a") == files_of(tiny["delta"])
    # Every request to the hub itself (listing, file metadata, small files) carried it.
    sent = endpoint.auth_seen[asked:]
    assert len(sent) > 1 and all(a == f"Bearer {secret}" for a in sent)


def test_hub_errors_name_the_reference(endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    with pytest.raises(hub.HubNotFound) as err:
        fetch(ref(BASE_REPO, C3), None, tmp_path / "x")
    assert err.value.one_line() == (
        f"{BASE_REPO}@{C3}: revision not found (fix: check the commit sha in profiles/models.lock)"
    )


def test_a_revision_the_hub_resolves_to_another_commit_is_refused(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A 40-hex name that is not the commit (here a branch so named) is no pin: refused, nothing fetched."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.repos[BASE_REPO].branches[C3] = C1
    with pytest.raises(BadInput) as err:
        fetch(ref(BASE_REPO, C3), None, tmp_path / "x")
    assert err.value.one_line() == (
        f"{BASE_REPO}@{C3}: hub resolved the revision to {C1} "
        "(fix: pin the full commit sha from profiles/models.lock)"
    )
    assert sum(endpoint.gets.values()) == 0 and not list(tmp_path.glob("*x*"))


def test_a_listing_without_file_sizes_is_refused_before_any_download(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Without the hub's sizes neither the disk check nor "unchanged" could be trusted."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"]).sizes = False
    with pytest.raises(hub.HubError) as err:
        fetch(ref(), None, tmp_path / "x")
    assert err.value.exit_code == 1
    assert err.value.one_line() == (
        f"{BASE_REPO}@{C1}: the hub listed chat_template.jinja without its size "
        "(fix: point HF_ENDPOINT at a hub that serves file metadata (?blobs=true))"
    )
    assert sum(endpoint.gets.values()) == 0


def test_a_listed_file_the_hub_cannot_serve_fails_naming_the_reference(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.faults.missing.add(SHARD2)
    with pytest.raises(hub.HubNotFound) as err:
        fetch(ref(), None, tmp_path / "base")
    assert err.value.one_line() == (
        f"{BASE_REPO}@{C1}: file not found in the repository (fix: check the file patterns)"
    )
    assert not (tmp_path / "base").exists()


def test_a_short_answer_fails_with_the_clients_first_line_and_a_rerun_completes(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A cut but well-formed answer: huggingface_hub's size check raises OSError; one line, then a re-run."""
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.faults.short[SHARD2] = 1000
    dest = tmp_path / "base"
    with pytest.raises(hub.HubError) as err:
        fetch(ref(), None, dest)
    size = (tiny["base"] / SHARD2).stat().st_size
    assert err.value.exit_code == 1
    assert err.value.one_line() == (
        f"{BASE_REPO}@{C1}: download failed (Consistency check failed: file should be of size {size} "
        f"but has size 1000 ({SHARD2}).) "
        "(fix: re-run the same command: finished files are kept and not fetched again)"
    )
    assert not dest.exists()
    # huggingface_hub cancels the downloads not yet started; those that finished are kept.
    finished = {p.name for p in (tmp_path / ".base.partial").iterdir() if p.is_file()}
    assert finished and SHARD2 not in finished
    endpoint.faults.short.clear()
    gets = dict(endpoint.gets)
    result = fetch(ref(), None, dest)
    assert result.status == "fetched"
    again = {k for k, v in endpoint.gets.items() if v != gets.get(k, 0)}
    assert SHARD2 in again and not again & finished
    # The result counts what was still missing, not what an earlier run had already fetched.
    sizes = {rel: len(data) for rel, data in files_of(tiny["base"]).items()}
    assert result.bytes_downloaded == sum(n for rel, n in sizes.items() if rel not in finished)
    assert files_of(dest) == files_of(tiny["base"])


def test_corrupt_small_and_lfs_files_are_each_caught_by_their_own_digest(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A same-size change: small files by git blob id (the hub lists no sha256 for them), LFS by sha256.

    Every bad file is removed with huggingface_hub's record of it, so the re-run fetches just those.
    """
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    endpoint.faults.corrupt.update({"config.json", SHARD2})
    dest, partial = tmp_path / "base", tmp_path / ".base.partial"
    meta = partial / ".cache" / "huggingface" / "download"

    def spoilt(data: bytes) -> bytes:
        return bytes([data[0] ^ 0xFF]) + data[1:]

    config, shard = (tiny["base"] / "config.json").read_bytes(), (tiny["base"] / SHARD2).read_bytes()
    with pytest.raises(CorruptDownload) as err:
        fetch(ref(), None, dest)
    n = len(config)
    assert err.value.one_line() == (
        "2 downloaded file(s) differ from the hub's metadata and were removed: config.json "
        f"(hub {git_blob_id(config)}, got {git_blob_id(spoilt(config))}, {n} of {n} bytes) "
        "(fix: re-run the same fetch to download them again)"
    )
    for rel in ("config.json", SHARD2):
        assert not (partial / rel).exists() and not (meta / f"{rel}.metadata").exists()
    assert (partial / "tokenizer.json").is_file() and (meta / "tokenizer.json.metadata").is_file()
    endpoint.faults.corrupt.discard("config.json")
    with pytest.raises(CorruptDownload) as err:
        fetch(ref(), None, dest)
    n = len(shard)
    assert err.value.one_line() == (
        f"1 downloaded file(s) differ from the hub's metadata and were removed: {SHARD2} "
        f"(hub {hashlib.sha256(shard).hexdigest()}, got {hashlib.sha256(spoilt(shard)).hexdigest()}, "
        f"{n} of {n} bytes) (fix: re-run the same fetch to download them again)"
    )
    endpoint.faults.corrupt.clear()
    gets = dict(endpoint.gets)
    assert fetch(ref(), None, dest).status == "fetched"
    # Finished files (small ones too: their records were kept) are not fetched again.
    assert {k: v - gets.get(k, 0) for k, v in endpoint.gets.items() if v != gets.get(k, 0)} == {SHARD2: 1}
    assert files_of(dest) == files_of(tiny["base"])


def test_stale_downloads_of_a_killed_run_are_dropped_before_downloading(
    endpoint: HubServer, tmp_path: Path
) -> None:
    """A SIGKILLed huggingface_hub leaves its process-unique `*.incomplete` files; nothing resumes them."""
    files = {"config.json": b"{}", "sub/model.safetensors": os.urandom(4096)}
    endpoint.add_repo("o/m", C1, files)
    endpoint.faults.corrupt.add("config.json")
    dest = tmp_path / "m"
    with pytest.raises(CorruptDownload):
        fetch(ref("o/m", C1), None, dest)
    meta = tmp_path / ".m.partial" / ".cache" / "huggingface" / "download"
    stale = [meta / "a1b2c3d4.0123abcd.incomplete", meta / "sub" / "e5f6a7b8.4567cdef.incomplete"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 999)
    endpoint.faults.corrupt.clear()
    left: list[bool] = []
    fetch(ref("o/m", C1), None, dest, on_phase=lambda p, _t: left.extend(s.exists() for s in stale))
    assert left and not any(left)


def test_bytes_on_disk_skips_a_download_that_finished_while_counting(tmp_path: Path) -> None:
    """A `.incomplete` renamed into place between listing and stat (a dangling link stands in for it)."""
    partial = tmp_path / ".x.partial"
    meta = partial / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "gone.incomplete").symlink_to(meta / "renamed-away")
    (meta / "live.incomplete").write_bytes(b"x" * 9)
    wanted = [fetch_mod.RemoteFile("a.safetensors", 100, "0" * 64, None)]
    assert fetch_mod._bytes_on_disk(partial, wanted) == 9


def test_progress_is_reported_while_downloading_and_while_hashing(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(BASE_REPO, C1, tiny["base"])
    stall = endpoint.faults.stall[SHARD2] = threading.Event()
    events: list[tuple[str, int]] = []
    phase = ["-"]

    def on_phase(name: str, _total: int) -> None:
        phase[0] = name

    def on_progress(n: int) -> None:
        events.append((phase[0], n))

    dest, partial = tmp_path / "base", tmp_path / ".base.partial"
    worker = threading.Thread(
        target=fetch,
        args=(ref(), None, dest),
        kwargs={"max_workers": 1, "on_phase": on_phase, "on_progress": on_progress},
    )
    worker.start()
    try:
        assert endpoint.faults.stalled.wait(60), "the download never reached the stalled file"
        # While stalled, what is on disk is fixed: the poller must report exactly that.
        meta = partial / ".cache" / "huggingface" / "download"
        on_disk = sum(p.stat().st_size for p in partial.iterdir() if p.is_file())
        on_disk += sum(p.stat().st_size for p in meta.rglob("*.incomplete"))
        assert on_disk > 0
        deadline = time.monotonic() + 20
        while ("download", on_disk) not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ("download", on_disk) in events, events
    finally:
        del endpoint.faults.stall[SHARD2]
        stall.set()
        worker.join(60)
    assert files_of(dest) == files_of(tiny["base"])
    total = sum(len(b) for b in files_of(tiny["base"]).values())
    assert all(0 <= n <= total for _, n in events), events  # never more than there is to fetch
    hashing = [n for p, n in events if p == "sha256"]
    # Hashing counts up chunk by chunk (several files, so several steps) to the total.
    assert len(hashing) > 2 and hashing == sorted(hashing) and hashing[0] < total and hashing[-1] == total


def test_a_file_of_the_old_revision_may_become_a_folder_and_back(endpoint: HubServer, tmp_path: Path) -> None:
    endpoint.add_repo("o/m", C1, {"config.json": b"{}", "extra": b"a file"})
    dest = tmp_path / "m"
    fetch(ref("o/m", C1), ["*"], dest)
    endpoint.repos["o/m"].files = {"config.json": b"{}", "extra/inner.txt": b"now a folder"}
    endpoint.repos["o/m"].commit = C2
    assert fetch(ref("o/m", C2), ["*"], dest, force=True).status == "fetched"
    assert files_of(dest) == endpoint.repos["o/m"].files
    endpoint.repos["o/m"].files = {"config.json": b"{}", "extra": b"a file again"}
    endpoint.repos["o/m"].commit = C3
    assert fetch(ref("o/m", C3), ["*"], dest, force=True).status == "fetched"
    assert files_of(dest) == endpoint.repos["o/m"].files
    assert verify_dir(dest).ok


def test_free_space_is_read_where_the_download_will_land(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that does not exist yet: the nearest existing folder above it holds the filesystem."""
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"])
    asked: list[Path] = []
    real = shutil.disk_usage

    def record(path: Any) -> Any:
        asked.append(Path(path))
        return real(path)

    monkeypatch.setattr(fetch_mod.shutil, "disk_usage", record)
    (tmp_path / "mnt").mkdir()
    fetch(ref(DELTA_REPO, C2), None, tmp_path / "mnt" / "a" / "b" / "delta")
    assert asked[0] == tmp_path / "mnt"  # ours comes first (huggingface_hub asks too, per file)


def test_the_unchanged_result_times_only_this_call(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"])
    fetch(ref(DELTA_REPO, C2), None, tmp_path / "d")
    before = time.monotonic()
    again = fetch(ref(DELTA_REPO, C2), None, tmp_path / "d")
    assert again.status == "unchanged" and 0 <= again.seconds <= time.monotonic() - before


def test_the_manifest_is_stable_readable_json(
    endpoint: HubServer, tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Sorted keys, 2-space indent, a final newline, mode 0644: two fetches write the same bytes (a diff of
    manifests shows real changes only), and any user on the host can read what `models verify` checks."""
    endpoint.add_dir(DELTA_REPO, C2, tiny["delta"])
    first, second = tmp_path / "a" / MANIFEST_NAME, tmp_path / "b" / MANIFEST_NAME
    fetch(ref(DELTA_REPO, C2), None, first.parent)
    fetch(ref(DELTA_REPO, C2), None, second.parent)
    text = first.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert second.read_bytes() == first.read_bytes()
    assert first.stat().st_mode & 0o777 == 0o644
