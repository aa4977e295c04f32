"""After each finished trial the study is read once: its front is computed once and every listener (budget,
failure streak, artifact store, progress bar) sees the same one."""

from __future__ import annotations

import io

from rich.console import Console

import search.results.front as front_module
from search.recipe.config import load_config
from search.results.artifacts import WEIGHTS, artifact_store, fetch
from search.results.front import front_numbers
from search.study.executors.inprocess import run_study


def test_a_study_computes_its_front_once_per_finished_trial(recipe_file, monkeypatch, tmp_path):
    calls: list[int] = []
    real_front_of = front_module.front_of

    def counted(trials):
        calls.append(len(list(trials)))
        return real_front_of(trials)

    monkeypatch.setattr(front_module, "front_of", counted)
    console = Console(file=io.StringIO(), width=160)
    monkeypatch.setattr("search.study.progress.Console", lambda **_: console)
    config = load_config(recipe_file())
    study = run_study(config, trials=4, show_progress=True)

    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(calls) == len(finished) == 4  # not once per listener: budget, streak, artifacts and bar share it
    monkeypatch.setattr(front_module, "front_of", real_front_of)
    front = front_numbers(study)
    store = artifact_store(config.run_dir)
    kept = {t.number for t in finished if fetch(t, WEIGHTS, store, tmp_path / f"{t.number}.pt")}
    assert kept == front  # the artifact listener kept the front's weights and dropped the rest
    assert f"front: {len(front)}" in console.file.getvalue()
