"""`gh200 upgrade`'s own logic with fakes for the series check, the build and rollout: input refused
before any side effect, stop at the first regression, exit codes, the report, and the pin written
only when every roll-out passed. (The classifier runs on real vLLM source in
tests/engine/images/test_vllm_series_classification.py; the real CLI path in
tests/engine/orchestrate/test_upgrade_vllm_cli.py.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from gh200.errors import BadInput, OperationFailed
from gh200.images.recipe import tree_hash
from gh200.orchestrate import upgrade as up
from gh200.orchestrate.rollout import RolloutResult
from gh200.paths import bundle_root, containers_dir

SHA = "c" * 64
APPLIES = [
    {"patch": "glm52-mtp-quant", "status": "applies", "detail": "mtp.py (9 hunks)"},
    {"patch": "dsv4-draft-hf-config-path", "status": "absorbed", "detail": "already present"},
]
UPSTREAM = [
    {"id": "dsv4-mtp-wo-a-bf16-fallback", "status": "upstream", "result": "upstream", "detail": "o_proj"}
]


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundle's containers/ and profiles/ as GH200_HOME; private cache and state."""
    home = tmp_path / "bundle"
    for part in ("containers", "profiles"):
        shutil.copytree(bundle_root() / part, home / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("GH200_HOME", str(home))
    monkeypatch.setenv("GH200_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    return home


def _snapshot(home: Path) -> dict[str, bytes]:
    root = home / "containers" / "vllm"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def series(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The series check's answer, settable per test; counts calls."""
    state: dict[str, Any] = {"classification": list(APPLIES), "upstream": list(UPSTREAM), "calls": 0}

    def check_series(version: str, **_: Any) -> dict[str, Any]:
        state["calls"] += 1
        carried = [{"id": r["patch"], "status": "carried"} for r in state["classification"]]
        return {"classification": state["classification"], "patches": carried + state["upstream"]}

    monkeypatch.setattr(up, "check_series", check_series)
    monkeypatch.setattr(up, "resolve_sdist", lambda version, sha: (SHA, False))
    return state


class FakeRollout:
    """rollout() per the orch interface; outcome per profile name (default passed)."""

    def __init__(self, outcomes: dict[str, str] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.calls: list[dict[str, Any]] = []

    def __call__(self, profile: Any, **kw: Any) -> RolloutResult:
        self.calls.append({"profile": profile.name, **kw})
        outcome = self.outcomes.get(profile.name, "passed")
        # The real result type, so that upgrade reads what rollout really returns.
        message = f"{profile.name}: output tok/s -12.0%" if outcome == "rolled_back" else ""
        return RolloutResult(outcome, profile.name, "testhost", message=message)  # type: ignore[arg-type]


def _profiles(*names: str) -> Callable[[], list[Any]]:
    return lambda: [SimpleNamespace(name=n) for n in names]


def _run(rollout: FakeRollout, names: tuple[str, ...] = ("a", "b", "c"), **kw: Any) -> up.UpgradeResult:
    built: list[Path] = kw.pop("built", [])

    def build(stage: Path) -> str:
        built.append(stage)
        return "localhost/gh200-vllm:new"

    return up.upgrade(
        "vllm",
        "0.34.0",
        progress=False,
        arm64=True,
        build=kw.pop("build", build),
        rollout=rollout,
        profiles=_profiles(*names),
        client=object(),
        **kw,
    )


def _report(result: up.UpgradeResult) -> dict[str, Any]:
    assert result.report is not None
    data: dict[str, Any] = json.loads(Path(result.report).read_text())
    return data


# --- bad input: refused before anything runs ------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "version", "match"),
    [
        ("vllm", "latest", "not a release"),
        ("vllm", "0.34.0.garbage!", "not a PEP 440 version"),
        ("vllm", "0.34.0+cu130", "local part"),
        ("vllm", "v0.34.0", "canonical"),
        ("vllm", "0.33.0", "already the pinned version"),
        ("vllm", "0.32.1", "older than the pinned 0.33.0"),
        ("llama_cpp", "0.34.0", "cannot upgrade 'llama_cpp'"),
    ],
)
def test_bad_input_is_refused_before_any_side_effect(
    bundle: Path, series: dict[str, Any], component: str, version: str, match: str | None
) -> None:
    before = _snapshot(bundle)
    rollout = FakeRollout()
    with pytest.raises(BadInput, match=match):
        up.upgrade(
            component,
            version,
            progress=False,
            arm64=True,
            build=lambda s: "x",
            rollout=rollout,
            profiles=_profiles("a"),
        )
    assert series["calls"] == 0 and rollout.calls == []
    assert _snapshot(bundle) == before
    assert not (bundle.parent / "state" / "upgrades").exists()


def test_unpinned_base_needs_unlocked_before_the_series_check(bundle: Path, series: dict[str, Any]) -> None:
    # On the workstation with the real builder: images.lock has no digest for the new base.
    with pytest.raises(BadInput, match=r"vllm/vllm-openai:v0\.34\.0-aarch64 has no digest"):
        up.upgrade("vllm", "0.34.0", progress=False, arm64=True, rollout=FakeRollout(), profiles=_profiles())
    assert series["calls"] == 0


# --- the roll-out loop ----------------------------------------------------------------------------


def test_every_profile_passes_then_the_pin_is_written(bundle: Path, series: dict[str, Any]) -> None:
    rollout = FakeRollout({"b": "no_baseline", "c": "accepted"})
    built: list[Path] = []
    result = _run(rollout, built=built, accept=True)
    assert result.outcome == "upgraded" and result.exit_code == 0
    assert [c["profile"] for c in rollout.calls] == ["a", "b", "c"]
    assert all(c["image"] == "localhost/gh200-vllm:new" and c["accept"] is True for c in rollout.calls)
    # The pin: series lists 0.34.0 with PyPI's sha256 for every applying/absorbed/upstream entry.
    data = yaml.safe_load((bundle / "containers/vllm/patches/series.yaml").read_text())
    assert data["vllm_sdists"] == {"0.33.0": data["vllm_sdists"]["0.33.0"], "0.34.0": SHA}
    listed = {p["id"] for p in data["patches"] if "0.34.0" in p["vllm"]}
    assert listed == {"glm52-mtp-quant", "dsv4-draft-hf-config-path", "dsv4-mtp-wo-a-bf16-fallback"}
    assert all("0.33.0" in p["vllm"] for p in data["patches"])  # older versions stay listed
    recipe = yaml.safe_load((bundle / "containers/vllm/recipe.yaml").read_text())
    assert recipe["base"] == {
        "arg": "BASE",
        "ref": "vllm/vllm-openai:v0.34.0-aarch64",
        "lock_key": "vllm-openai-0.34.0-aarch64",
    }
    assert (
        "ARG BASE=vllm/vllm-openai:v0.34.0-aarch64\n"
        in (bundle / "containers/vllm/Containerfile").read_text()
    )
    assert "# sha256 of the vLLM sdists" in (bundle / "containers/vllm/patches/series.yaml").read_text()
    report = _report(result)
    assert report == result.as_json()
    assert set(report) >= {
        "host",
        "component",
        "from",
        "to",
        "series",
        "image",
        "outcome",
        "rollouts",
        "report",
    }
    assert (report["from"], report["to"], report["outcome"]) == ("0.33.0", "0.34.0", "upgraded")
    assert [r["outcome"] for r in report["rollouts"]] == ["passed", "no_baseline", "accepted"]
    md = Path(result.report).with_name(Path(result.report).name.removesuffix(".json") + ".md").read_text()
    assert "**upgraded**" in md and "| glm52-mtp-quant | applies |" in md and "| b | no_baseline |" in md


def test_the_build_sees_the_new_pin_and_the_bundle_does_not_until_the_end(
    bundle: Path, series: dict[str, Any]
) -> None:
    before = _snapshot(bundle)
    seen: dict[str, Any] = {}

    def build(stage: Path) -> str:
        seen["stage_hash"] = tree_hash(stage / "containers" / "vllm")
        seen["staged_ref"] = yaml.safe_load((stage / "containers/vllm/recipe.yaml").read_text())["base"][
            "ref"
        ]
        seen["bundle_then"] = _snapshot(bundle)
        return "localhost/gh200-vllm:new"

    result = _run(FakeRollout(), build=build)
    assert result.outcome == "upgraded"
    assert seen["staged_ref"] == "vllm/vllm-openai:v0.34.0-aarch64"
    assert seen["bundle_then"] == before
    # The promoted recipe is byte-identical to the staged one: `gh200 images build vllm` afterwards
    # computes the very tag the upgrade built.
    assert tree_hash(containers_dir() / "vllm") == seen["stage_hash"]


@pytest.mark.parametrize(
    ("outcome", "expected", "code"), [("rolled_back", "rolled_back", 3), ("failed", "failed", 1)]
)
def test_the_first_regression_stops_the_upgrade_and_nothing_is_pinned(
    bundle: Path, series: dict[str, Any], outcome: str, expected: str, code: int
) -> None:
    before = _snapshot(bundle)
    rollout = FakeRollout({"b": outcome})
    result = _run(rollout)
    assert (result.outcome, result.exit_code) == (expected, code)
    assert [c["profile"] for c in rollout.calls] == ["a", "b"]  # c is never rolled out
    assert _snapshot(bundle) == before
    report = _report(result)
    assert [r["profile"] for r in report["rollouts"]] == ["a", "b"]
    assert report["rollouts"][1]["outcome"] == outcome
    assert "profile b" in report["detail"] and report["pinned"] == []
    if outcome == "rolled_back":
        assert "(b: output tok/s -12.0%)" in report["detail"]  # rollout's message: which metric moved


def test_a_failed_build_rolls_nothing_out(bundle: Path, series: dict[str, Any]) -> None:
    before = _snapshot(bundle)

    def build(stage: Path) -> str:
        raise OperationFailed("building vllm failed: apply_patches", "see the log")

    rollout = FakeRollout()
    result = _run(rollout, build=build)
    assert (result.outcome, result.exit_code) == ("failed", 1)
    assert rollout.calls == [] and _snapshot(bundle) == before
    assert "building vllm failed" in _report(result)["detail"]


def test_a_conflict_stops_before_the_build_and_names_the_patch(bundle: Path, series: dict[str, Any]) -> None:
    series["classification"] = [
        APPLIES[0],
        {
            "patch": "dsv4-draft-hf-config-path",
            "status": "conflicts",
            "detail": "vllm/config/speculative.py: hunk 1 @@ -3,6 +3,7 @@ does not match",
        },
    ]
    built: list[Path] = []
    rollout = FakeRollout()
    result = _run(rollout, built=built)
    assert (result.outcome, result.exit_code) == ("series_conflict", 1)
    assert built == [] and rollout.calls == []
    assert "patch dsv4-draft-hf-config-path conflicts" in result.detail
    assert "vllm/config/speculative.py: hunk 1" in result.detail
    assert "gh200 patches check --vllm 0.34.0" in result.detail
    assert _report(result)["series"][1]["status"] == "conflicts"


def test_a_missing_upstream_fix_stops_too(bundle: Path, series: dict[str, Any]) -> None:
    series["upstream"] = [
        {
            "id": "dsv4-mtp-eh-proj-prefix",
            "status": "upstream",
            "result": "missing",
            "detail": "mtp.py lacks 'prefix='",
        }
    ]
    result = _run(FakeRollout())
    assert (
        result.outcome == "series_conflict"
        and "upstream fix dsv4-mtp-eh-proj-prefix is missing" in result.detail
    )


def test_without_an_arm64_build_it_stops_after_the_series_with_the_command(
    bundle: Path, series: dict[str, Any]
) -> None:
    before = _snapshot(bundle)
    rollout = FakeRollout()
    result = up.upgrade(
        "vllm", "0.34.0", accept=True, progress=False, arm64=False, rollout=rollout, profiles=_profiles("a")
    )
    assert (result.outcome, result.exit_code) == ("stopped_after_series", 0)
    assert result.next_command == "gh200 upgrade vllm 0.34.0 --accept"
    assert rollout.calls == [] and result.image is None and _snapshot(bundle) == before
    assert _report(result)["outcome"] == "stopped_after_series"


def test_no_deployed_profile_upgrades_the_pin_alone(bundle: Path, series: dict[str, Any]) -> None:
    result = _run(FakeRollout(), names=())
    assert result.outcome == "upgraded" and result.rollouts == [] and len(result.pinned) == 3


def test_deployed_vllm_profiles_are_found_by_label(bundle: Path) -> None:
    from gh200.served import L_ENGINE, L_PROFILE

    asked: list[Any] = []
    rows = [
        ("glm52-awq", "running"),
        ("glm52-awq", "running"),
        ("dsv4-flash-canada-mtp3", "running"),
        ("glm52-fp8-offload270", "exited"),
    ]

    class Containers:
        def list(self, **kw: Any) -> list[Any]:
            asked.append(kw)
            return [SimpleNamespace(labels={L_PROFILE: n, L_ENGINE: "vllm"}, status=s) for n, s in rows]

    found = up.deployed_vllm_profiles(SimpleNamespace(containers=Containers()))
    assert [p.name for p in found] == ["dsv4-flash-canada-mtp3", "glm52-awq"]
    assert f"{L_ENGINE}=vllm" in asked[0]["filters"]["label"]


class _NoEngine:
    """Only what plan_build asks of an engine here: no image is local, the platform is unknown."""

    class images:  # noqa: N801 - mirrors DockerClient.images
        @staticmethod
        def get(ref: str) -> Any:
            from docker.errors import ImageNotFound

            raise ImageNotFound(ref)


@pytest.mark.parametrize("smoke", ["passed", "skipped", "failed"])
def test_the_builder_plans_from_the_stage_and_fails_on_a_failed_runtime_smoke(
    bundle: Path, series: dict[str, Any], monkeypatch: pytest.MonkeyPatch, smoke: str
) -> None:
    from gh200.images import build as build_module
    from gh200.images import vllm_venv

    planned: list[Any] = []

    def build_image(client: Any, name: str, **kw: Any) -> Any:
        # The real plan of the real (staged) recipe; only the engine's build is left out.
        planned.append(
            build_module.plan_build(client, name, platform=kw["platform"], unlocked=kw["unlocked"])
        )
        return SimpleNamespace(tag=planned[-1].tag)

    monkeypatch.setattr(build_module, "build_image", build_image)
    monkeypatch.setattr(
        vllm_venv, "image_runtime_smoke", lambda client, tag: {"state": smoke, "lines": ["x"]}
    )
    rollout = FakeRollout()
    result = up.upgrade(
        "vllm",
        "0.34.0",
        unlocked=True,
        progress=False,
        arm64=True,
        client=_NoEngine(),
        rollout=rollout,
        profiles=_profiles("a"),
    )
    (plan,) = planned
    assert plan.base.ref == "vllm/vllm-openai:v0.34.0-aarch64" and plan.platform == "linux/arm64"
    if smoke == "failed":
        assert result.outcome == "failed" and "runtime smoke test failed" in result.detail
        assert rollout.calls == []
        return
    assert result.outcome == "upgraded" and rollout.calls[0]["image"] == plan.tag == result.image
    # After the pin moved, the bundle's own plan names the image the upgrade built.
    after = build_module.plan_build(_NoEngine(), "vllm", platform="linux/arm64", unlocked=True)
    assert after.tag == plan.tag


def test_repinning_keeps_comments_and_never_writes_a_version_twice(bundle: Path) -> None:
    from gh200.images.vllm_pin import repinned_files

    path = bundle / "containers/vllm/patches/series.yaml"
    original = path.read_text()
    path.write_text(original.replace("vllm_sdists:\n", f'vllm_sdists:\n  "0.34.0": {SHA}\n', 1))
    files = repinned_files("0.34.0", SHA, {"glm52-mtp-quant"})
    text = files[Path("patches/series.yaml")]
    assert text.count('"0.34.0": ') == 1
    assert '    vllm: ["0.33.0", "0.34.0"]\n' in text and text.count('"0.34.0"]') == 1
    # Every comment line of the original survives.
    assert [ln for ln in original.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in text.splitlines() if ln.lstrip().startswith("#")
    ]
    with pytest.raises(OperationFailed, match="not once"):
        # A recipe whose base names another image cannot be re-pinned by these edits.
        recipe = bundle / "containers/vllm/Containerfile"
        recipe.write_text(
            recipe.read_text().replace("ARG BASE=vllm/vllm-openai:v0.33.0-aarch64", "ARG BASE=x")
        )
        repinned_files("0.34.0", SHA, {"glm52-mtp-quant"})


def test_deployed_profiles_are_listed_before_the_build(bundle: Path, series: dict[str, Any]) -> None:
    order: list[str] = []

    def profiles() -> list[Any]:
        order.append("list")
        return [SimpleNamespace(name="a")]

    def build(stage: Path) -> str:
        order.append("build")
        return "localhost/gh200-vllm:new"

    up.upgrade(
        "vllm",
        "0.34.0",
        progress=False,
        arm64=True,
        build=build,
        rollout=FakeRollout(),
        profiles=profiles,
        client=object(),
    )
    assert order == ["list", "build"]


# --- the gate's floor (--min-effect) ----------------------------------------------------------------


def test_every_roll_out_gates_at_the_floor_given_and_the_report_names_it(
    bundle: Path, series: dict[str, Any]
) -> None:
    rollout = FakeRollout()
    result = _run(rollout, min_effect=0.2)
    assert result.outcome == "upgraded"
    assert [(c["profile"], c["min_effect"]) for c in rollout.calls] == [("a", 0.2), ("b", 0.2), ("c", 0.2)]
    assert _report(result)["min_effect"] == 0.2


def test_without_a_floor_each_roll_out_gets_the_gates_default(bundle: Path, series: dict[str, Any]) -> None:
    # None: the gate's own default, decided in one place (rollout), not copied here.
    rollout = FakeRollout()
    result = _run(rollout)
    assert [c["min_effect"] for c in rollout.calls] == [None, None, None]
    assert _report(result)["min_effect"] is None


def test_the_workstation_command_carries_the_floor(bundle: Path, series: dict[str, Any]) -> None:
    result = up.upgrade(
        "vllm",
        "0.34.0",
        min_effect=0.18,
        progress=False,
        arm64=False,
        rollout=FakeRollout(),
        profiles=_profiles(),
    )
    assert result.next_command == "gh200 upgrade vllm 0.34.0 --min-effect 0.18"


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, float("nan")])
def test_a_bad_floor_is_refused_before_the_series_check(
    bundle: Path, series: dict[str, Any], value: float
) -> None:
    rollout = FakeRollout()
    with pytest.raises(BadInput, match="--min-effect"):
        _run(rollout, min_effect=value)
    assert series["calls"] == 0 and rollout.calls == []


@pytest.mark.parametrize("value", ["abc", "0", "1"])
def test_the_cli_refuses_a_bad_floor_in_one_line_before_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    import sys

    from gh200.cli import main

    def must_not_run(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("upgrade ran")

    monkeypatch.setattr(up, "upgrade", must_not_run)
    monkeypatch.setattr(sys, "argv", ["gh200", "upgrade", "vllm", "0.34.0", "--min-effect", value, "--json"])
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    assert done.value.code == 2 and out == ""
    assert f"--min-effect {value}" in err and len(err.strip().splitlines()) == 1, err
