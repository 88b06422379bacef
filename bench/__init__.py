"""densebench's engine: cases, isolated workers, timing, statistics, results store, reports and gates.

Modules are imported lazily by whoever needs them (the per-case child imports only torch, the models and the
measuring modules, never pandas), so keep this file free of imports.
"""
