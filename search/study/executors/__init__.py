"""How trials are executed: one process, several local worker processes, or Ray Tune trials.

Every executor writes to the same Optuna storage, so `status`, `pareto` and `export` read a study the
same way whichever executor ran it. `local` (worker processes) and `ray_executor` import only what they
need; Ray is imported when the Ray executor runs.
"""
