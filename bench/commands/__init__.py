"""The subcommands of run_bench.py, one module each (asv-style): `add_parser(subparsers)` declares the command's
own options and sets `func`, which takes the parsed arguments and returns the exit status."""
