"""The `nanocommander` console script: Ollama's verbs over composite models.

Each area contributes its own subcommands through an `add_commands(subparsers)`
function, so this file only wires them together. stdout carries results only;
progress, stats and errors go to stderr, and failures exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

from nanocommander.errors import NanoCommanderError

# Modules that each define add_commands(subparsers); each command sets `func(args) -> int`.
COMMAND_MODULES = (
    "nanocommander.cli.run",
    "nanocommander.cli.rpc_server",
    "nanocommander.cli.registry",
    "nanocommander.cli.serve",
    "nanocommander.cli.tune",
    "nanocommander.cli.plugins",
    "nanocommander.cli.client",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanocommander", description="Fine-tune small, command large.")
    parser.add_argument("--version", action="version", version=f"nanocommander {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def _version() -> str:

    try:
        return version("nanocommander")
    except PackageNotFoundError:
        return "0.0.0"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except NanoCommanderError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
