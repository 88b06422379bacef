"""A history across commits: record the same small matrix per commit, find the steps, confirm them, bisect.

store (STORE/<machine>/<commit>.parquet, append-only) <- record (the engine at HEAD) ; gitlog (commit identity,
first-parent order) ; steps (asv's step detection per case and metric) -> confirm (a same-process A/B of the two
commits of a step, bench.ab with --a-rev/--b-rev) ; bisect (A/B against GOOD at each midpoint) ; page (the HTML).
The CLI is bench.commands.history (`run_bench.py history record|show|bisect`).
"""
