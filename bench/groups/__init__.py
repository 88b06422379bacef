"""The interleaved design of the main job: the cases of one decision measured in the same processes.

budget.py (which cases form a group, the cost of a process, the budget's split), pairs.py (per-process paired log
ratios -> faster / tied / not resolved), schedule.py (rounds over the open groups, through the runner). The child
half is bench.measure.interleaved.
"""
