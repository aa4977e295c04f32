"""`slimsearch dashboard`: a real optuna-dashboard process serving the study, its user attrs and artifacts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from search.cli import main
from search.recipe.config import load_config
from search.results.artifacts import ARTIFACTS_DIR
from search.results.front import front_numbers
from search.study.executors.inprocess import run_study
from search.study.storage import create_or_load_study, frozen_recipe

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def wait_until_serving(proc: subprocess.Popen, url: str, timeout: float = 120) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the dashboard exited:\n{proc.communicate()[0]}"
        try:
            return get(url)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"nothing served at {url}")


def test_dashboard_serves_study_trials_and_artifacts(recipe_file):
    config = load_config(recipe_file(**{"search.trials": 2}))
    study = run_study(config, show_progress=False)
    front = front_numbers(study)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", str(config.run_dir), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        summaries = json.loads(wait_until_serving(proc, f"{base}/api/studies"))["study_summaries"]
        (summary,) = [s for s in summaries if s["study_name"] == config.name]
        detail = json.loads(get(f"{base}/api/studies/{summary['study_id']}"))
        assert detail["objective_names"] == ["accuracy", "latency_ms"]
        assert len(detail["trials"]) == 2
        for trial in detail["trials"]:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            assert {"candidate", "accuracy", "latency", "params", "macs", "seconds"} <= set(attrs)
            assert json.loads(attrs["candidate"]) == study.trials[trial["number"]].user_attrs["candidate"]
            files = {a["filename"]: a["artifact_id"] for a in trial["artifacts"]}
            if trial["number"] in front:
                assert set(files) == {"model.pt", "model.onnx"}
                served = get(f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/{files['model.onnx']}")
                assert served == (config.run_dir / ARTIFACTS_DIR / files["model.onnx"]).read_bytes()
        assert {t["number"] for t in detail["best_trials"]} == front
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_on_a_busy_port_is_a_usage_error(recipe_file):
    config = load_config(recipe_file())
    with frozen_recipe(config):
        create_or_load_study(config)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "search.cli", "dashboard", str(config.run_dir), "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
    assert res.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in res.stderr and "--port" in res.stderr
    assert "optuna-dashboard for study" not in res.stdout  # nothing claims to listen on a busy port


def test_a_port_out_of_range_is_refused_before_anything_opens(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["dashboard", str(tmp_path), "--port", "70000"])
    assert exit_.value.code == 2
    assert "--port: expected a port from 1 to 65535, got 70000" in capsys.readouterr().err
