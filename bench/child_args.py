"""The fixed argument forms of the suite's internal entry points (`python -m bench.launch.worker --case SPEC
--result OUT`, `python -m bench.measure.instructions --spec FILE --out FILE`): `--flag VALUE` or `--flag=VALUE`
pairs, read without argparse, which lives only in the CLI (bench/cli.py, bench/commands/). Their parents write
these forms; what is wrong with another form is one line, which each entry point prints with its usage (exit 2).
"""
from __future__ import annotations


def flag_values(argv: list[str], flags: tuple[str, ...]) -> dict[str, str] | str:
    """{flag: value} of every flag given (either order, `--flag=VALUE` too), or what is wrong with argv."""
    got: dict[str, str] = {}
    rest = list(argv)
    while rest:
        flag, eq, value = rest.pop(0).partition("=")
        if flag not in flags:
            return f"unrecognized arguments: {' '.join([flag, *rest])}"
        if not eq:
            if not rest or rest[0].startswith("--"):
                return f"argument {flag}: expected one argument"
            value = rest.pop(0)
        got[flag] = value
    return got
