"""`audio-omni` command line. Each sub-command lives in its own module and is imported only when run,
so `audio-omni --help` stays fast and the orchestrator never imports torch at module top.

The machinery (`CommandTable`, `build_parser`, `main`) serves any table of lazily imported
sub-commands; the offline `audio-omni-train` (training/cli.py) runs on it with its own table."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandTable:
    """A program's sub-commands: name -> (module, help). The module exposes
    `add_arguments(parser, name)` and `run(args) -> int`; one module may serve several names (it
    reads `args.command`)."""

    prog: str
    description: str
    commands: Mapping[str, tuple[str, str]]


COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("orchestrator.commands.verify", "check weights against reference test vectors"),
    "verify-sync": ("orchestrator.commands.verify_sync", "check Synchformer weights against its test vectors"),
    "inspect": ("orchestrator.commands.inspect", "list parameter names and shapes of a preset"),
    "convert-checkpoint": ("orchestrator.commands.convert", "split a released checkpoint into parts"),
    "batch": ("orchestrator.commands.batch", "run a JSONL manifest of jobs (embedded mode)"),
    "serve": ("orchestrator.commands.serve", "service mode: Ray Serve pools + engine loops on Redis/S3"),
    "submit": ("orchestrator.commands.jobs", "submit a job or a JSONL batch to the queue"),
    "status": ("orchestrator.commands.jobs", "show a job's or a batch's status"),
    "cancel": ("orchestrator.commands.jobs", "cancel a job"),
    "results": ("orchestrator.commands.jobs", "download or list results of a job or batch"),
    "api": ("orchestrator.commands.api", "serve the HTTP API (FastAPI under uvicorn) on Redis/S3"),
    "tenants": ("orchestrator.commands.tenants", "create, list, update and revoke API tenants and keys"),
    "report": ("orchestrator.commands.report", "write a batch's HTML report (players, spectrograms, timings)"),
    "dead-letters": ("orchestrator.commands.dead_letters", "list or re-queue dead-lettered jobs (operator)"),
    "webhooks": ("orchestrator.commands.webhooks", "run the webhook delivery loop; list deliveries"),
}
ONLINE = CommandTable(prog="audio-omni", description="Audio-Omni job system", commands=COMMANDS)


def _load(module: str) -> tuple[Callable[[argparse.ArgumentParser, str], None], Callable[[argparse.Namespace], int]]:
    mod = importlib.import_module(module)
    return mod.add_arguments, mod.run


def build_parser(table: CommandTable = ONLINE) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=table.prog, description=table.description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in table.commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            add_arguments, _ = _load(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(_missing=True)
            continue
        add_arguments(p, name)
    return parser


def main(argv: Sequence[str] | None = None, table: CommandTable = ONLINE) -> int:
    parser = build_parser(table)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"{table.prog}: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    _, run = _load(args._module)
    try:
        return int(run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # a user's bad value or path: say it, no traceback
        print(f"{table.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
