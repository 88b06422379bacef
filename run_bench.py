"""Benchmark entry point: `python run_bench.py --help` (see bench/cli.py)."""
if __name__ == "__main__":
    from bench.cli import main

    raise SystemExit(main())
