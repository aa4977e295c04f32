"""Several `slimsearch run` processes adding to one study on a real PostgreSQL server (127.0.0.1:5432, db `test`)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.study.storage import make_storage

ROOT = Path(__file__).resolve().parents[1]
URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def study_name():
    """A fresh study name on the server; the study is deleted afterwards. Skips if the server is unreachable."""
    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL is unreachable at 127.0.0.1:5432 (user postgres, db test); .ci/run starts it: {exc}")
    name = f"pg_{uuid.uuid4().hex[:12]}"
    yield name
    if name in optuna.get_all_study_names(make_storage(URL)):
        optuna.delete_study(study_name=name, storage=make_storage(URL))


def test_two_processes_add_to_one_postgres_study(recipe_file, study_name, capsys):
    recipe = recipe_file(name=study_name)
    cmd = [sys.executable, "-m", "search.cli", "run", str(recipe), "--storage", URL, "--trials", "3", "--no-progress"]
    workers = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)

    study = optuna.load_study(study_name=study_name, storage=make_storage(URL))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert 3 <= len(done) <= 3 + 1, "the total is respected to within one trial per process"
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done), "two processes drew one candidate"
    assert len({t.number for t in study.trials}) == len(study.trials)
    for t in done:
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["latency"]["median_ms"]]

    run_dir = load_config(recipe).run_dir
    assert (run_dir / "config.yaml").read_text().count(URL) == 1
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert f"({len(done)} complete)" in capsys.readouterr().out
