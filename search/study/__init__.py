"""The Optuna study of a run and what drives it: storage, samplers, seeding, recovery of dead workers, progress,
and the executors that run trials."""
