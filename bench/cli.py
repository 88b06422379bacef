"""Command line of run_bench.py (and the `densebench` console script): a thin layer over bench.api.

Each subcommand is a module of bench.commands that declares its own parser (`add_parser`) and the function it
runs; `run` is the default when the first argument is an option. Every bad input ends in ONE line on stderr
naming what is accepted and exit status 2, before anything is written. Nothing of the suite imports this module
back: the commands and bench.fleet take `UsageError` and `PROG` from bench.errors (re-exported here).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from bench.commands import ab, check, compare, history, models, node, profile, report, run
from bench.errors import PROG, BenchInputError, UsageError

COMMANDS = (run, profile, models, report, compare, check, ab, history, node)  # in `--help`'s order


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage + message
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> tuple[Parser, list[str]]:
    """The parser with one subparser per command module, and the command names."""
    parser = Parser(prog=PROG, add_help=False)
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    names = []
    for module in COMMANDS:
        p = module.add_parser(sub)
        if module.NAME != "run":
            p.prog = f"{PROG} {module.NAME}"
        names.append(module.NAME)
    return parser, names


def _bad_input() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input (one line for users) wherever they are raised below the CLI."""
    from models.user import ModelSourceError  # the zoo (torch): importing the CLI stays light

    # PlanError, CaseError, RunFolderError, RunFormatError, UsageError, ArgumentError, ...: all BenchInputError
    return BenchInputError, ModelSourceError


def _file_size_limit_is_a_full_disk() -> None:
    """Under a file-size limit (RLIMIT_FSIZE) a write past it gets EFBIG, as a full disk gets ENOSPC, and the run
    stops cleanly with its files intact; without this the kernel's SIGXFSZ would kill it mid-commit."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    _file_size_limit_is_a_full_disk()
    bad_input = _bad_input()
    try:
        parser, names = build_parser()
        if not argv or argv[0].startswith("-"):
            argv = ["run", *argv]
        elif argv[0] not in names:
            raise UsageError(f"unknown command {argv[0]!r}; accepted: {', '.join(names)} (run is the default, "
                             "e.g. run_bench.py --devices cpu --res 512)")
        args = parser.parse_args(argv)
        args.argv = given  # as typed: recorded in meta.json
        return int(args.func(args) or 0)
    except bad_input as e:
        print(f"{PROG}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `run_bench.py --list | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


__all__ = ["PROG", "Parser", "UsageError", "build_parser", "main"]
