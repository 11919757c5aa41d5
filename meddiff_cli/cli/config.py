"""Settings from a TOML file and ``MEDDIFF_*`` env vars, ``meddiff config show`` and ``meddiff config devices``.

``meddiff --config run.toml CMD …`` (or ``MEDDIFF_CONFIG=run.toml``) loads ``[CMD]`` tables into click's
``default_map``; every subcommand option gets the env var ``MEDDIFF_<CMD>_<FLAG>`` (``MEDDIFF_SAMPLE_COUNT``).
click then resolves flag > env > file > default for real runs, and ``config show`` builds the same contexts to
read what it decided, so the precedence rule lives in exactly one place. Root options (``--version``) get no env
var on purpose: ``MEDDIFF_VERSION=1`` in a job script must not change what every command does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from meddiff_cli.cli.common import VERBOSE_OPTION, describe_parameters, print_json, show_settings
from meddiff_cli.errors import BadInputError, InputNotFoundError, UsageError


def _flag_name(param: Any) -> str:
    """``--batch-size`` -> ``batch-size``; an argument keeps its name (``inputs``)."""
    longs = [opt[2:] for opt in param.opts if opt.startswith("--")]
    return max(longs, key=len) if longs else param.name


def name_envvars(command: Any, prefix: str = "MEDDIFF") -> None:
    """Give every option the env var ``MEDDIFF_<COMMAND>_<FLAG>`` (``--format`` -> ``MEDDIFF_SAMPLE_FORMAT``).

    click's ``auto_envvar_prefix`` would use Python parameter names (``MEDDIFF_SAMPLE_FILE_FORMAT``) and also
    cover root options; users know flags. Runs on the freshly built click tree before any subcommand parses,
    so real runs, ``--help`` and ``config show`` agree.
    """
    for name, sub in getattr(command, "commands", {}).items():
        sub_prefix = f"{prefix}_{name.upper().replace('-', '_')}"
        for param in sub.params:
            if param.param_type_name == "option" and not param.envvar:
                param.envvar = f"{sub_prefix}_{_flag_name(param).upper().replace('-', '_')}"
        name_envvars(sub, sub_prefix)


def _key_names(param: Any) -> set[str]:
    """Spellings a TOML key may use: ``batch_size``, ``batch-size`` (its long flag without --).

    Not ``no-flip-lr``: a key names the option and the value says true/false (``flip-lr = false``).
    """
    names = {param.name}
    for opt in param.opts:
        if opt.startswith("--"):
            names |= {opt[2:], opt[2:].replace("-", "_")}
    return names


def _normalise(table: dict[str, Any], command: Any, where: str, path: Path) -> dict[str, Any]:
    """TOML table -> ``default_map`` entry for ``command`` (a click command or group), validating every key."""
    by_key = {key: param for param in command.params for key in _key_names(param)}
    subcommands = getattr(command, "commands", {})
    result: dict[str, Any] = {}
    for key, value in table.items():
        if key in subcommands and isinstance(value, dict):
            result[key] = _normalise(value, subcommands[key], f"{where}.{key}", path)
        elif key in by_key:
            param = by_key[key]
            if isinstance(value, list) and not param.multiple and param.nargs == 1:
                value = ",".join(str(v) for v in value)  # spacing = [1.5, 1.5, 3] -> "1.5,1.5,3"
            result[param.name] = value
        else:
            known = sorted({_flag_name(param) for param in command.params} | set(subcommands))
            raise UsageError(f"unknown setting {key!r} in table {where!r}; known: {', '.join(known)}", path)
    return result


def load_config(path: Path, group: Any) -> dict[str, Any]:
    """Read a TOML config file into a ``default_map`` for ``group`` (the root click group)."""
    if not path.is_file():
        raise InputNotFoundError("config file not found", path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BadInputError(f"not a valid TOML config file ({error})", path) from None
    default_map: dict[str, Any] = {}
    for name, table in data.items():
        command = group.commands.get(name)
        if command is None or not isinstance(table, dict):
            raise UsageError(f"unknown command table {name!r}; known: {', '.join(sorted(group.commands))}", path)
        default_map[name] = _normalise(table, command, name, path)
    return default_map


def apply_config(ctx: typer.Context, _param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Root ``--config`` callback (always called): subcommand contexts created after it see env names and file."""
    name_envvars(ctx.command)
    if value is not None and not ctx.resilient_parsing:
        ctx.default_map = load_config(Path(value), ctx.command)
    return value


def effective_settings(root: Any, path: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Settings of the command at ``path`` (and, for a group, of every subcommand) as a real run would see them."""
    ctx, command = root, root.command
    for name in path:
        command = getattr(command, "commands", {}).get(name)
        if command is None:
            raise UsageError(f"unknown command {' '.join(path)!r}; known: {', '.join(sorted(root.command.commands))}")
        # No arguments: what a run would get from env, file and defaults. resilient_parsing: required flags
        # may be missing here (a real run would then ask for them on the command line).
        ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    if command.params and path:
        result[" ".join(path)] = describe_parameters(ctx)
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if name != "config":
            result.update(effective_settings(root, [*path, name]))
    return result


config_app = typer.Typer(
    name="config", no_args_is_help=True,
    help="Inspect settings (which value every option of every command would take, and where it comes from) "
         "and the devices torch and ONNX Runtime can use.",
    epilog="Example: MEDDIFF_SAMPLE_STEPS=30 meddiff --config run.toml config show sample",
)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command(
    "show",
    help=(
        "Print the effective value of each option (for COMMAND, or all commands) and its source: env "
        "(MEDDIFF_<COMMAND>_<OPTION>), file (--config / MEDDIFF_CONFIG TOML table [COMMAND]) or default. "
        "Precedence in real runs: flag > env > file > default."
    ),
    epilog="Example: meddiff --config run.toml config show sample --json",
)
def show_command(
    ctx: typer.Context,
    command: Optional[list[str]] = typer.Argument(None, help="Command, e.g. sample or models list (default: all)."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Accepted for symmetry; prints nothing extra anyway."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show the env var name of each option."),
) -> None:
    root = ctx.find_root()
    settings = effective_settings(root, list(command or []))
    config_file = root.params.get("config_file")
    if json_output:
        print_json({"config_file": str(config_file) if config_file else None, "commands": settings})
        return
    console = Console(width=200) if not Console().is_terminal else Console()
    for name, params in settings.items():
        table = Table(title=f"meddiff {name}", title_justify="left")
        for column in ("option", "value", "source", *(["env var"] if verbose else [])):
            table.add_column(column)
        for entry in params.values():
            row = [entry["flag"], repr(entry["value"]), entry["source"]]
            table.add_row(*row, *([entry["env"] or "-"] if verbose else []))
        console.print(table)


@config_app.command(
    "devices",
    help="Print the torch build (CUDA version, visible GPUs) and ONNX Runtime's execution providers, i.e. what "
         "--device auto can use here. Imports torch and ONNX Runtime, so it takes a few seconds.",
    epilog="Example: meddiff config devices --json",
)
def devices_command(
    json_output: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Accepted for symmetry; prints nothing extra anyway."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    import onnxruntime
    import torch

    show_settings(verbose, quiet)

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    report = {
        "torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "cuda_available": bool(gpus), "gpus": gpus,
        "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": onnxruntime.get_available_providers(),
    }
    if json_output:
        print_json(report)
        return
    cuda = f"yes, {len(gpus)} GPU(s): {', '.join(gpus)}" if gpus else "no"
    typer.echo(f"torch {report['torch']} (CUDA build: {report['torch_cuda_build'] or 'none'}; CUDA available: {cuda})")
    typer.echo(f"onnxruntime {report['onnxruntime']} (providers: {', '.join(report['onnxruntime_providers'])})")
