"""CLI: `gh200 images build NAME`, `gh200 images list`, `gh200 patches check --vllm VERSION`."""

from __future__ import annotations

import typer
from rich.table import Table

from gh200.output import console, emit_json

images_app = typer.Typer(help="Build and list the bundle's container images.", no_args_is_help=True)
patches_app = typer.Typer(help="The vLLM patch series baked into containers/vllm.", no_args_is_help=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


@images_app.command("build")
def build_cmd(  # noqa: PLR0917 - typer maps each option to a parameter
    name: str = typer.Argument(..., help="Recipe: a directory of containers/ with a recipe.yaml."),
    platform: str | None = typer.Option(None, "--platform", help="linux/amd64 or linux/arm64."),
    unlocked: bool = typer.Option(False, "--unlocked", help="Allow a base or source not pinned by digest."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if an image of this recipe hash exists."),
    build_arg: list[str] = typer.Option(
        [], "--build-arg", help="KEY=VALUE over the recipe's build args, e.g. SMOKE=compile (repeatable)."
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON result on stdout, no progress."),
) -> None:
    """Build an image, tagged by its recipe's content hash (an unchanged recipe is not rebuilt)."""
    from gh200.engine import connect
    from gh200.errors import BadInput
    from gh200.images.build import build_image, check_request

    overrides: dict[str, str] = {}
    for item in build_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise BadInput(f"--build-arg {item!r} is not KEY=VALUE", "write e.g. --build-arg SMOKE=compile")
        overrides[key] = value
    # Refuse what can be refused before connecting: connecting may start the Podman service.
    check_request(name, platform=platform, unlocked=unlocked)
    client = connect()
    result = build_image(
        client,
        name,
        platform=platform,
        unlocked=unlocked,
        progress=not json_out,
        force=force,
        build_args=overrides,
    )
    runtime: dict[str, object] | None = None
    if name == "vllm":
        # The patch series executed in the real image with GPU kernels (tests/vllm runs it on CPU).
        from gh200.images.vllm_venv import image_runtime_smoke

        runtime = image_runtime_smoke(client, result.tag)
    if json_out:
        emit_json({**result.as_json(), **({"runtime_smoke": runtime} if runtime else {})})
    else:
        what = f"built in {result.seconds:.0f}s" if result.built else "up to date (recipe unchanged)"
        console.print(f"[bold green]{result.tag}[/] {what}, {_size(result.size_bytes)}")
        if runtime:
            console.print(f"runtime smoke test: {runtime['state']} {runtime.get('detail', '')}")
            for line in runtime.get("lines", []):  # type: ignore[attr-defined]
                console.print(f"  {line}")
    if runtime and runtime["state"] == "failed":
        raise typer.Exit(1)


@images_app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="One JSON result on stdout.")) -> None:
    """Each recipe, its current tag, and whether a built image matches the current recipe."""
    from gh200.engine import connect
    from gh200.images.build import list_images

    rows = list_images(connect())
    if json_out:
        emit_json({"images": rows})
        return
    table = Table(title="gh200 images")
    for column in ("recipe", "image", "current tag", "built tags", "up to date", "note"):
        table.add_column(column)
    for row in rows:
        # Tags differ only after the colon: show that part, the image column names the repository.
        built = "\n".join(
            f"{', '.join(t.rsplit(':', 1)[-1] for t in b['tags'])} {_size(b['size_bytes'])}"
            + (" current" if b["matches_recipe"] else " stale")
            for b in row["built"]
        )
        table.add_row(
            row["name"],
            row["image"],
            (row["current_tag"] or "-").rsplit(":", 1)[-1],
            built or "-",
            "yes" if row["up_to_date"] else "no",
            row["note"],
        )
    console.print(table)


@patches_app.command("check")
def check_cmd(
    vllm: str = typer.Option(..., "--vllm", help="vLLM version, e.g. 0.33.0."),
    sha256: str | None = typer.Option(
        None,
        "--sha256",
        help="sha256 of that vLLM sdist, for a version the series does not pin yet (default: PyPI's).",
    ),
    runtime: bool = typer.Option(
        True, "--runtime/--no-runtime", help="Also run each carried patch's runtime test on the cached wheel."
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON result on stdout, no progress."),
) -> None:
    """Apply the series to that vLLM's sdist (sha256 checked) in a scratch tree; exit 1 on a conflict.

    With the vLLM test venv cached (tests/vllm builds it), each carried patch's runtime test runs
    on the real wheel too; the table says when the wheel is not cached yet."""
    from gh200.images.patches import check_series

    report = check_series(vllm, sha256=sha256, progress=not json_out, runtime=runtime)
    if json_out:
        emit_json(report)
    else:
        if not report["sdist_pinned"]:
            console.print(
                f"vLLM {vllm} sdist sha256 {report['sdist_sha256']} (from PyPI's index; not pinned in "
                "series.yaml: `gh200 upgrade vllm` records it when an upgrade succeeds)"
            )
        table = Table(title=f"vLLM {vllm} patch series")
        for column in ("patch", "status", f"for {vllm}", "result", "runtime", "detail"):
            table.add_column(column)
        colours = {"applies": "green", "upstream": "cyan", "absorbed": "yellow"}
        classes = {row["patch"]: row["status"] for row in report["classification"]}
        for row in report["patches"]:
            # Carried patches show the series classification (the one `gh200 upgrade` prints).
            result = classes.get(row["id"], row["result"])
            colour = colours.get(result, "red" if result in ("conflicts", "missing") else "dim")
            listed = "listed" if row.get("listed") else "not listed"
            ran = row.get("runtime", "-")
            ran_colour = {"passed": "green", "failed": "red"}.get(ran, "dim")
            detail = row.get("detail", "")
            if row.get("runtime_detail"):
                detail += f"\nruntime: {row['runtime_detail']}"
            table.add_row(
                row["id"],
                row["status"],
                listed,
                f"[{colour}]{result}[/]",
                f"[{ran_colour}]{ran}[/]",
                detail,
            )
        console.print(table)
        if report.get("runtime", {}).get("state") == "not-cached":
            console.print(f"runtime tests not run: {report['runtime']['detail']}")
    if not report["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.add_typer(images_app, name="images")
    app.add_typer(patches_app, name="patches")
