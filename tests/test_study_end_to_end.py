"""A real study: SQLite storage on disk, digits data, ONNX Runtime latency, reports and resume."""

from __future__ import annotations

import json

import optuna
import yaml
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from search.trial.build import build_context


def test_run_records_attributes_and_resumes(recipe_file, tmp_path, capsys):
    config = load_config(recipe_file())
    study = run_study(config, show_progress=False)
    run_dir = config.run_dir
    assert (run_dir / "study.db").is_file()
    frozen = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert frozen["name"] == config.name and frozen["storage"] == "sqlite:///study.db"  # relative to the run dir

    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    space = build_context(config).space
    for t in done:
        candidate = t.user_attrs["candidate"]
        rebuilt = space.build(json.loads(json.dumps(candidate)))  # the stored JSON alone rebuilds the network
        assert sum(p.numel() for p in rebuilt.parameters()) == t.user_attrs["params"]
        assert t.values[0] == t.user_attrs["accuracy"]
        assert t.values[1] == t.user_attrs["latency"]["median_ms"]
        lat = t.user_attrs["latency"]
        for key in ("median_ms", "p90_ms", "cv", "runs", "backend", "backend_version", "device"):
            assert key in lat
        assert t.user_attrs["macs"] > 0 and t.user_attrs["params"] > 0
    assert study.metric_names == ["accuracy", "latency_ms"]

    study = run_study(load_config(recipe_file()), trials=5, show_progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    reopened = optuna.load_study(study_name=config.name, storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(reopened.trials) == 5

    assert main(["pareto", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of" in out and "hypervolume" in out
    for name in ("pareto.csv", "pareto.png", "pareto.html"):
        assert (run_dir / name).stat().st_size > 0
    assert main(["status", str(run_dir)]) == 0
    assert "5 trials (5 complete)" in capsys.readouterr().out


def test_same_seed_samples_same_candidates(recipe_file, tmp_path):
    a = run_study(load_config(recipe_file(), ["name=a"]), trials=2, show_progress=False)
    b = run_study(load_config(recipe_file(), ["name=b"]), trials=2, show_progress=False)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_cli_run_prints_front(recipe_file, capsys):
    assert main(["run", str(recipe_file()), "--trials", "2", "--no-progress"]) == 0
    assert "Pareto front of" in capsys.readouterr().out


def test_status_of_missing_run_dir_is_usage_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
