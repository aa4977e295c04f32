"""The driver: config, Optuna study, objective, Pareto front, reports and the CLI."""
