"""`gh200 profiles list|show|validate|render` and `gh200 lock`."""

from __future__ import annotations

import json
import shlex
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gh200.errors import BadInput, Gh200Error, ProfileError
from gh200.output import console, emit_json, stdout_console
from gh200.paths import profiles_dir
from gh200.profiles import loader, locks, render
from gh200.profiles.schema import Profile, Stack
from gh200.profiles.validate import validate

profiles_app = typer.Typer(help="Serving profiles: list, show, validate, render.", no_args_is_help=True)

JSON_OPT = typer.Option(False, "--json", help="One JSON object on stdout.")


class RenderAs(StrEnum):
    argv = "argv"
    env = "env"
    container = "container"
    compose = "compose"


def _summary(item: Profile | Stack) -> dict[str, object]:
    if isinstance(item, Stack):
        return {
            "name": item.name,
            "kind": "stack",
            "description": item.description,
            "profiles": item.profiles,
        }
    headline = next(iter(item.expected), None)
    return {
        "name": item.name,
        "kind": "profile",
        "engine": item.engine,
        "description": item.description,
        "model": item.model.repo,
        "lock": locks.lock_state(item),
        "expected": [e.model_dump() for e in item.expected],
        "headline": None
        if headline is None
        else f"{headline.value:g} {headline.metric} @{headline.shape}"
        + (f" c{headline.concurrency}" if headline.concurrency > 1 else ""),
    }


@profiles_app.command("list")
def list_cmd(as_json: bool = JSON_OPT) -> None:
    """Every profile and stack in profiles/."""
    items = [_summary(loader.load_any(name)) for name in loader.list_names()]
    if as_json:
        emit_json({"profiles": items, "changed": False})
        return
    table = Table(title=f"profiles in {profiles_dir()}", title_justify="left")
    # Names are what people copy into the next command: never wrapped or cut.
    table.add_column("name", no_wrap=True)
    table.add_column("engine", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("expected", overflow="fold")
    table.add_column("lock", no_wrap=True)
    for item in items:
        if item["kind"] == "stack":
            table.add_row(str(item["name"]), "stack", " + ".join(item["profiles"]), "", "")  # type: ignore[arg-type]
        else:
            table.add_row(
                str(item["name"]),
                str(item["engine"]),
                str(item["model"]),
                str(item["headline"] or ""),
                str(item["lock"]),
            )
    # A pipe gets rich's 80 columns by default, which wraps every row; the table is only as wide
    # as its content, so give it room there. A terminal keeps its own width.
    out = stdout_console if stdout_console.is_terminal else Console(width=max(stdout_console.width, 160))
    out.print(table)


@profiles_app.command("show")
def show_cmd(name: str, as_json: bool = JSON_OPT) -> None:
    """The fully resolved profile (extends merged), its pins and whether they are locked."""
    item = loader.load_any(name)
    if isinstance(item, Stack):
        data: dict[str, object] = {"stack": item.model_dump(mode="json", by_alias=True)}
    else:
        pins = [
            {"kind": p.kind, "key": p.key, "ref": p.ref, "pinned": p.value, "state": p.state}
            for p in locks.all_pins(item)
        ]
        data = {
            "profile": item.model_dump(mode="json", by_alias=True),
            "pins": pins,
            "lock": locks.lock_state(item),
            "profile_hash": render.profile_hash(item),
        }
    if as_json:
        emit_json({**data, "changed": False})
        return
    import yaml

    # soft_wrap: rich would otherwise break long lines at the console width, corrupting the YAML.
    stdout_console.print(
        yaml.safe_dump(next(iter(data.values())), sort_keys=False),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if isinstance(item, Profile):
        for pin in locks.all_pins(item):
            state = {"locked": "[green]locked[/]", "local": "[cyan]local (content-pinned)[/]"}.get(
                pin.state, "[yellow]unlocked[/]"
            )
            stdout_console.print(f"{pin.kind} {pin.ref}: {state} {pin.value or ''}")


@profiles_app.command("validate")
def validate_cmd(
    paths: list[Path] = typer.Argument(None, help="Profile files or names (default: all in profiles/)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Schema and semantic checks; each failure is one line naming file, field and fix. Exit 2 on any."""
    targets: list[str | Path] = list(paths) if paths else list(loader.list_names())
    results = []
    failures = 0
    for target in targets:
        try:
            problems = [p.one_line() for p in validate(target)]
        except Gh200Error as err:
            problems = [err.one_line()]
        failures += bool(problems)
        results.append({"target": str(target), "ok": not problems, "problems": problems})
    if as_json:
        emit_json({"results": results, "ok": failures == 0, "changed": False})
    else:
        for result in results:
            if result["ok"]:
                console.print(f"[green]ok[/]    {result['target']}")
            for problem in result["problems"]:  # type: ignore[attr-defined]
                console.print(f"[red]error[/] {problem}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(2)


@profiles_app.command("render")
def render_cmd(
    name: str,
    as_: RenderAs = typer.Option(RenderAs.argv, "--as", help="argv, env, container or compose."),
    locked: bool = typer.Option(False, "--locked", help="Refuse unless every pin is resolved."),
    as_json: bool = JSON_OPT,
) -> None:
    """Exactly what will run. Deterministic."""
    # Validate the file that was named (a path or a name in profiles/); stack members live beside it.
    path = loader.profile_path(name)
    item = loader.load_any(path)
    problems = validate(path)
    if problems:
        raise ProfileError(problems[0].one_line().rsplit(" (fix: ", 1)[0], problems[0].fix)
    members = (
        [loader.load_profile(path.parent / f"{n}.yaml") for n in item.profiles]
        if isinstance(item, Stack)
        else [item]
    )
    stack = item.name if isinstance(item, Stack) else None
    if locked:
        for member in members:
            locks.require_locked(member)
    if as_ == RenderAs.compose:
        text = render.compose(members, stack)
        if as_json:
            emit_json({"compose": text, "changed": False})
        else:
            typer.echo(text, nl=False)
        return
    if stack and as_ != RenderAs.container:
        raise BadInput(
            f"{name} is a stack; --as {as_.value} renders one profile", "use --as container or compose"
        )
    if as_ == RenderAs.container:
        specs = [render.container_spec(m, stack) for m in members]
        typer.echo(json.dumps(specs if stack else specs[0], indent=2, sort_keys=True))
        return
    profile = members[0]
    if as_ == RenderAs.argv:
        args = render.argv(profile)
        if as_json:
            emit_json({"argv": args, "changed": False})
        else:
            typer.echo(shlex.join(args))
    else:
        variables = render.env(profile)
        if as_json:
            emit_json({"env": variables, "changed": False})
        else:
            for key, value in variables.items():
                typer.echo(f"{key}={shlex.quote(value)}")


def lock_cmd(
    names: list[str] = typer.Argument(None, help="Profiles to lock (default: all)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Resolve image tags to digests and model revisions to commit shas; write profiles/*.lock."""
    profiles = [
        p for p in (loader.load_any(n) for n in (names or loader.list_names())) if isinstance(p, Profile)
    ]
    result = locks.write_locks(profiles)
    payload = {
        "resolved": [
            {"kind": p.kind, "key": p.key, "ref": p.ref, "pinned": p.value} for p in result.resolved
        ],
        "failed": [{"ref": ref, "error": error} for ref, error in result.failed],
        "changed": result.changed,
    }
    if as_json:
        emit_json(payload)
    else:
        for pin in result.resolved:
            console.print(f"[green]locked[/] {pin.kind} {pin.ref} -> {pin.value}")
        for ref, error in result.failed:
            # Resolver messages usually name the ref already; one line each, never wrapped.
            line = error if ref in error else f"{ref}: {error}"
            console.print(f"[red]failed[/] {line}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(profiles_app, name="profiles")
    app.command("lock")(lock_cmd)
