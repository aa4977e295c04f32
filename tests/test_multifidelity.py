"""Multi-fidelity search: successive halving on the front, rungs that continue one fine-tune, resume mid-rung."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.cli import main
from search.recipe.config import load_config
from search.recipe.sections import FidelityConfig
from search.results.front import front_numbers
from search.results.record import TrialRecord
from search.study.executors.inprocess import run_study
from search.study.storage import completed, open_study
from search.trial.fidelity import RungPoint, decide, nondominated_layers, promotion_order
from tests.conftest import tiny_recipe
from tests.test_compress_study import recipe as compress_recipe

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str = "mf", **changes: object) -> Path:
    """A tiny digits recipe with multi-fidelity on: rungs of 0.25 and 0.5 epochs, eta 2."""
    raw = tiny_recipe(tmp_path, **{"name": name, "search.sampler": "random", "search.trials": 6,
                                   "search.fidelity": {"rungs": [0.25, 0.5], "eta": 2}, **changes})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def points(*values: tuple[float, float]) -> list[RungPoint]:
    return [RungPoint(i, acc, lat) for i, (acc, lat) in enumerate(values)]


def test_candidates_are_ordered_by_front_then_hypervolume_contribution():
    # Front: #0 (0.9, 3 ms), #1 (0.8, 1 ms), #2 (0.85, 2 ms); #3 (0.7, 2.5 ms) is dominated by #1 and #2.
    pts = points((0.9, 3.0), (0.8, 1.0), (0.85, 2.0), (0.7, 2.5))
    assert [[p.trial for p in layer] for layer in nondominated_layers(pts)] == [[0, 1, 2], [3]]
    # Reference latency 1.1 × 3 = 3.3 ms. Without #1 the front loses (2 - 1) × 0.8 = 0.8; without #2,
    # (3 - 2) × (0.85 - 0.8) = 0.05; without #0, (3.3 - 3) × (0.9 - 0.85) = 0.015.
    assert [p.trial for p in promotion_order(pts)] == [1, 2, 0, 3]


def rung_study(results: list[tuple[float, float]], promoted: tuple[int, ...] = (),
               anchors: tuple[int, ...] = ()) -> optuna.Study:
    """A study whose trials have a rung-0 result each (accuracy, latency); `promoted` are at rung 1, `anchors` are
    the recipe's anchor policies."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (acc, lat) in enumerate(results):
        attrs = {"rungs": [{"rung": 0, "accuracy": acc}], "latency": {"median_ms": lat}, "rung": int(i in promoted),
                 "anchor": i in anchors}
        study.add_trial(create_trial(state=TrialState.RUNNING, params={"x": float(i)},
                                     distributions={"x": FloatDistribution(0, 99)}, user_attrs=attrs))
    return study


def test_the_best_one_in_eta_of_a_rung_is_promoted_and_a_full_rung_takes_no_more():
    study = rung_study([(0.5, 1.0), (0.6, 1.0), (0.7, 1.0), (0.4, 1.0), (0.3, 1.0), (0.2, 1.0)])
    cfg = FidelityConfig(rungs=[0, 1], eta=3)
    assert [decide(study, n, 0, cfg).promote for n in range(6)] == [False, True, True, False, False, False]
    assert "placed 3 of 6 at rung 0; the best 2 (1/3) go on" in decide(study, 0, 0, cfg).reason
    first = rung_study([(0.1, 1.0)])
    assert decide(first, 0, 0, cfg).promote, "the first candidate of a rung always goes on"
    full = rung_study([(0.5, 1.0), (0.9, 1.0)], promoted=(0,))
    capped = FidelityConfig(rungs=[0, 1], eta=2, max_per_rung=[None, 1])
    assert not decide(full, 1, 0, capped).promote and "rung 1 is full" in decide(full, 1, 0, capped).reason


def test_an_anchor_policy_goes_on_whatever_its_place_at_the_rung():
    results = [(0.6, 1.0), (0.2, 0.5), (0.7, 2.0)]  # #2 is third of three: only the best one would go on
    cfg = FidelityConfig(rungs=[0, 1], eta=3)
    assert not decide(rung_study(results), 2, 0, cfg).promote
    decision = decide(rung_study(results, anchors=(2,)), 2, 0, cfg)
    assert decision.promote and decision.reason == "placed 3 of 3 at rung 0, an anchor"


def test_a_study_scores_in_rungs_and_its_front_holds_top_rung_candidates_only(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["run", str(path), "--no-progress"]) == 0
    config, study = open_study(load_config(path).run_dir)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6 and not study.get_trials(states=(TrialState.RUNNING,))
    records = {t.number: TrialRecord.of(t) for t in done}
    for t in done:
        r = records[t.number]
        assert r.top_rung == 1 and [x["rung"] for x in r.rungs] == list(range(r.rung + 1))
        assert [x["epochs"] for x in r.rungs] == [0.25, 0.5][: r.rung + 1]
        assert t.values == [r.rungs[-1]["accuracy"], r.latency_ms] and r.accuracy == r.rungs[-1]["accuracy"]
        assert all(x["seconds"] > 0 for x in r.rungs)
        assert (r.stopped is None) == (r.rung == 1), r.stopped
    top = {n for n, r in records.items() if r.rung == 1}
    assert top and len(top) < 6, "some candidates stop at the first rung"
    assert front_numbers(study) <= top
    assert not list((config.run_dir / "checkpoints").glob("*.pt")), "a finished trial leaves no checkpoint"

    capsys.readouterr()
    assert main(["status", str(config.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"rung 0 (0.25 ep): 6, rung 1 (0.5 ep, top): {len(top)}" in out
    assert main(["pareto", str(config.run_dir)]) == 0
    assert "candidates scored per rung" in capsys.readouterr().out
    assert '"name":"top rung 1"' in (config.run_dir / "pareto.html").read_text()

    low = min(n for n in records if n not in top)
    out_dir = tmp_path / "low"
    assert main(["export", str(config.run_dir), "--trial", str(low), "--out", str(out_dir)]) == 0
    assert f"trial #{low} stopped at rung 0 (0.25 epochs)" in capsys.readouterr().out
    assert "the search stopped it at rung 0" in (out_dir / "card.md").read_text()


def test_a_promoted_candidate_ends_with_the_fine_tune_a_single_fidelity_study_gives_it(tmp_path):
    mf = run_study(load_config(write(tmp_path, "mf1", **{"search.trials": 1})), show_progress=False)
    single = tiny_recipe(tmp_path, **{"name": "sf1", "search.sampler": "random", "search.trials": 1})
    (tmp_path / "sf1.yaml").write_text(yaml.safe_dump(single))
    sf = run_study(load_config(tmp_path / "sf1.yaml"), show_progress=False)
    a, b = TrialRecord.of(mf.trials[0]), TrialRecord.of(sf.trials[0])
    assert a.candidate == b.candidate and a.rung == a.top_rung == 1
    assert a.accuracy == b.accuracy and a.train_loss == b.train_loss


def test_infeasible_candidates_stop_at_the_first_rung_untrained(tmp_path):
    study = run_study(load_config(write(tmp_path, **{"constraints.latency_ms": 1e-6, "search.trials": 2})),
                      show_progress=False)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        r = TrialRecord.of(t)
        assert r.rungs == [] and r.rung == 0 and r.feasible is False
        assert r.stopped == "over the latency_ms constraint: stopped untrained" and "train" not in r.seconds


def test_report_top_tells_the_sampler_of_stopped_candidates_as_pruned(tmp_path):
    path = write(tmp_path, **{"search.trials": 4, "search.fidelity": {"rungs": [0.25, 0.5], "eta": 3, "report": "top"}})
    study = run_study(load_config(path), show_progress=False)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and all(TrialRecord.of(t).rung == 0 and TrialRecord.of(t).stopped for t in pruned)
    assert all(TrialRecord.of(t).rung == 1 for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert completed(study) == 4, "stopped candidates count towards the budget"


def test_a_compression_study_screens_with_adaptive_bn_at_rung_zero(tmp_path):
    raw = compress_recipe(tmp_path)
    raw["search"] = {"sampler": "random", "trials": 4, "anchors": 0, "fidelity": {"rungs": [0, 0.5], "eta": 2}}
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = run_study(load_config(path), show_progress=False)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        r = TrialRecord.of(t)
        assert r.rungs[0]["epochs"] == 0 and r.rungs[0]["accuracy_fp32"] == r.accuracy_adaptive_bn
        assert r.vs_base is not None and r.latency["precision"] == r.candidate["precision"]


def test_rungs_a_space_cannot_be_scored_at_are_refused_before_any_trial(tmp_path, capsys):
    path = write(tmp_path, **{"search.fidelity": {"rungs": [0, 0.5]}})
    assert main(["run", str(path), "--no-progress"]) == 2
    assert "a first rung of 0 epochs scores a blocks candidate before any training" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "train.epochs=2"]) == 2
    assert "the top rung is the whole fine-tune" in capsys.readouterr().err


def test_two_workers_share_a_multifidelity_study(tmp_path):
    path = write(tmp_path)
    assert main(["run", str(path), "--workers", "2", "--no-progress"]) == 0
    _, study = open_study(load_config(path).run_dir)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert 6 <= len(done) <= 7 and all(TrialRecord.of(t).rungs for t in done)
    assert any(TrialRecord.of(t).rung == 1 for t in done) and any(TrialRecord.of(t).rung == 0 for t in done)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


def test_a_candidate_killed_mid_rung_resumes_at_that_rung_from_its_checkpoint(tmp_path):
    long = {"search.trials": 1, "search.heartbeat_interval": 1, "train.epochs": 2,
            "search.fidelity": {"rungs": [0.5, 2], "eta": 2}}
    path = write(tmp_path, "killed", **long)
    run_dir = load_config(path).run_dir
    proc = subprocess.Popen(cli("run", str(path), "--no-progress"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((run_dir / "checkpoints").glob("trial-0.pt")):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no rung checkpoint was written"
            time.sleep(0.05)
        _, study = open_study(run_dir)
        while study.trials[0].user_attrs.get("rung") != 1:  # promoted: the second rung's fine-tune has begun
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the candidate was not promoted"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    _, study = open_study(run_dir)
    killed = TrialRecord.of(study.trials[0])
    assert study.trials[0].state == TrialState.RUNNING and len(killed.rungs) == 1 and killed.rung == 1

    res = subprocess.run(cli("resume", str(run_dir), "--no-progress"), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    _, study = open_study(run_dir)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    resumed = TrialRecord.of(study.trials[1])
    assert resumed.rungs[0] == killed.rungs[0], "the first rung's result is kept, not measured again"
    assert resumed.rung == 1 and resumed.latency == killed.latency
    assert not list((run_dir / "checkpoints").glob("*.pt"))

    straight = run_study(load_config(write(tmp_path, "straight", **long)), show_progress=False)
    assert resumed.accuracy == TrialRecord.of(straight.trials[0]).accuracy, "resuming changed the fine-tune"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_ray_run_scores_in_rungs(tmp_path):
    import ray

    path = write(tmp_path, **{"search.trials": 4})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["run", str(path), "--executor", "ray", "--max-concurrent", "2", "--no-progress"]) == 0
    finally:
        ray.shutdown()
    _, study = open_study(load_config(path).run_dir)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 4 and all(TrialRecord.of(t).rungs for t in done)
    assert not study.get_trials(states=(TrialState.RUNNING,))
