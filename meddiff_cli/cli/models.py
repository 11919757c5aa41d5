"""``meddiff models``: list, inspect, verify, import and remove cached models."""

from __future__ import annotations

from pathlib import Path

import typer

from meddiff_cli.cli.common import VERBOSE_OPTION, complete_model, err_console, info, print_json, show_settings
from meddiff_cli.errors import UsageError
from meddiff_cli.model.card import ModelCard
from meddiff_cli.model.registry import import_model, list_models, model_summary, remove_model, resolve_model, verify_model
from meddiff_cli.paths import models_dir

models_app = typer.Typer(
    name="models", no_args_is_help=True,
    help="Manage the local model cache ($MEDDIFF_HOME or the user cache; never touches the network).",
    epilog="Example: meddiff models list; meddiff models verify my-model; meddiff models import ./my-model --name ct64",
)

CACHE_OPTION = typer.Option(None, "--cache-dir", help="Model cache folder (default: $MEDDIFF_HOME or the user cache).")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON on stdout.")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No messages on stderr.")
NAME_ARGUMENT_HELP = "Model name (TAB completes cached ones) or folder."


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.callback()
def models_root(offline: bool = typer.Option(False, "--offline", help="Accepted for scripts: meddiff never uses the network.")) -> None:
    """Nothing to set up: every subcommand works on the local cache only."""


@models_app.command("list", help="List cached models.", epilog="Example: meddiff models list --json")
def list_command(cache_dir: Path | None = CACHE_OPTION, json_output: bool = JSON_OPTION, quiet: bool = QUIET_OPTION,
                 verbose: bool = VERBOSE_OPTION) -> None:
    show_settings(verbose, quiet)
    entries = list_models(cache_dir)
    if json_output:
        print_json({"cache": str(models_dir(cache_dir)), "models": entries})
        return
    info(f"cache: {models_dir(cache_dir)}", quiet)
    if not entries:
        info("no models (train one with `meddiff train` or `meddiff models import PATH`)", quiet)
    for entry in entries:  # the listing itself is the command's output: stdout, one line per model
        if "error" in entry:
            typer.echo(f"{entry['name']}\tERROR {entry['error']}")
        else:
            shape = "x".join(str(s) for s in entry["volume_shape"] or [])
            typer.echo(f"{entry['name']}\t{entry['preset']}\t{','.join(entry['modalities'])}\t{shape}\t"
                       f"{entry['size_bytes'] / 1e6:.1f} MB\tonnx: {', '.join(entry['onnx']) or '-'}")


@models_app.command("info", help="Show a model's card.", epilog="Example: meddiff models info default --json")
def info_command(name: str = typer.Argument(..., help=NAME_ARGUMENT_HELP, autocompletion=complete_model), cache_dir: Path | None = CACHE_OPTION,
                 json_output: bool = JSON_OPTION, quiet: bool = QUIET_OPTION, verbose: bool = VERBOSE_OPTION) -> None:
    show_settings(verbose, quiet)
    folder = resolve_model(name, cache_dir)
    summary = model_summary(folder)
    if json_output:
        print_json({**summary, "card": ModelCard.load(folder).to_dict()})
        return
    for key, value in summary.items():
        typer.echo(f"{key}: {value}")


@models_app.command("verify", help="Check the sha256 of every file listed in the model card(s) (exit 6 on mismatch).",
                    epilog="Example: meddiff models verify  (all cached models) or meddiff models verify my-model")
def verify_command(name: str | None = typer.Argument(None, autocompletion=complete_model,
                                                   help="Model name or folder (default: every cached model)."),
                   cache_dir: Path | None = CACHE_OPTION, json_output: bool = JSON_OPTION,
                   quiet: bool = QUIET_OPTION, verbose: bool = VERBOSE_OPTION) -> None:
    show_settings(verbose, quiet)
    folders = [resolve_model(name, cache_dir)] if name else [Path(e["folder"]) for e in list_models(cache_dir)]
    report = {}
    for folder in folders:
        report[folder.name] = verify_model(folder)  # raises ModelError (exit 6) on the first bad file
        info(f"{folder.name}: {len(report[folder.name])} files ok", quiet)
    if json_output:
        print_json({"verified": report})


@models_app.command("import", help="Copy a model folder into the cache after checking its card and hashes.",
                    epilog="Example: meddiff models import ./runs/ct64 --name ct64")
def import_command(path: Path = typer.Argument(..., help="Model folder (model.json + the files it lists)."),
                   name: str | None = typer.Option(None, "--name", help="Name in the cache (default: the card's name)."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace a cached model of that name."),
                   cache_dir: Path | None = CACHE_OPTION, json_output: bool = JSON_OPTION,
                   quiet: bool = QUIET_OPTION, verbose: bool = VERBOSE_OPTION) -> None:
    show_settings(verbose, quiet)
    target = import_model(path, name, cache_dir, overwrite)
    info(f"imported {path} as {target.name} ({target})", quiet)
    if json_output:
        print_json(model_summary(target))


@models_app.command("rm", help="Delete a model from the cache.", epilog="Example: meddiff models rm old-model --yes")
def rm_command(name: str = typer.Argument(..., help="Model name in the cache.", autocompletion=complete_model),
               yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
               cache_dir: Path | None = CACHE_OPTION, json_output: bool = JSON_OPTION, quiet: bool = QUIET_OPTION,
               verbose: bool = VERBOSE_OPTION) -> None:
    show_settings(verbose, quiet)
    if not yes:
        if not err_console.is_terminal:
            raise UsageError(f"refusing to delete model {name!r} without confirmation; pass --yes")
        if not typer.confirm(f"Delete model {name!r}?", err=True):
            raise typer.Exit(1)
    folder = remove_model(name, cache_dir)
    info(f"removed {folder}", quiet)
    if json_output:
        print_json({"removed": name, "folder": str(folder)})
