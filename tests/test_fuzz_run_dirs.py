"""Bad input, round two, on run directories and running studies: a damaged study database or frozen recipe is one
message and exit code 2, a copied run directory resumes on its own database, a trial queued again after a kill is
no result, and Ctrl-C or SIGTERM ends a run with exit code 130 / 143, one line and no traceback."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest
import yaml

from search.cli import main
from search.results.pareto import trials_frame
from tests.conftest import ROOT, tiny_recipe
from tests.test_fuzz_cli import _check, _write, compress
from tests.test_fuzz_cli_round2 import bomb

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment of the command lines these tests start: a latency lock of their own (TMPDIR), so they never
    wait on another study's measurements on this machine, and one torch thread."""
    private = tmp_path_factory.mktemp("tmpdir")
    return {**os.environ, "TMPDIR": str(private), "OMP_NUM_THREADS": "1", "SLIMSEARCH_CACHE": str(private)}


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env) -> Path:
    """The run directory of a tiny study of two trials, run by the command line with --no-progress."""
    root = tmp_path_factory.mktemp("finished")
    recipe = _write(root, tiny_recipe(root, name="two", **{"search.trials": 2}), "two.yaml")
    proc = cli(["run", str(recipe), "--no-progress"], env)
    assert proc.returncode == 0, proc.stderr
    assert "#0 " in proc.stderr and "#1 " in proc.stderr, "--no-progress still prints a line per trial"
    return root / "runs" / "two"


def copy_run(finished: Path, tmp: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(finished, tmp / "runs" / name))


def overwrite(offset: int, size: int) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        with (run / "study.db").open("r+b") as f:
            f.seek(offset)
            f.write(b"\xa5" * size)

    return damage


def replace(name: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return damage


def truncate_db(run: Path) -> None:
    os.truncate(run / "study.db", 8192)


def config_folder(run: Path) -> None:
    (run / "config.yaml").unlink()
    (run / "config.yaml").mkdir()


DAMAGES = [
    ("db-header-status", overwrite(100, 4000), "status", "study.db"),
    ("db-header-resume", overwrite(100, 4000), "resume", "study.db"),
    ("db-pages-pareto", overwrite(8192, 4096), "pareto", "study.db"),
    ("db-random-status", replace("study.db", os.urandom(5000)), "status", "study.db"),
    ("db-truncated-resume", truncate_db, "resume", "study.db"),
    ("db-truncated-export", truncate_db, "export", "study.db"),
    ("config-binary-status", replace("config.yaml", b"\xff\xfe\x00name"), "status", "config.yaml"),
    ("config-bomb-status", replace("config.yaml", bomb("lol")), "status", "config.yaml"),
    ("config-alias-loop-resume", replace("config.yaml", "name: &n [*n]\n"), "resume", "config.yaml"),
    ("config-empty-status", replace("config.yaml", ""), "status", "config.yaml"),
    ("config-folder-status", config_folder, "status", "config.yaml"),
]


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage, command, field", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_a_damaged_run_directory_is_one_message(finished, tmp_path, capsys, damage, command, field):
    run = copy_run(finished, tmp_path)
    damage(run)
    before = _files(run)
    args = [command, str(run)] + (["--trial", "0", "--out", str(tmp_path / "out")] if command == "export" else [])
    _check(main(args), capsys.readouterr().err, field)
    assert _files(run) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("frozen", ["relative", "absolute, as earlier versions froze it"])
def test_a_copied_run_directory_resumes_on_its_own_database(finished, tmp_path, capsys, frozen):
    original = _files(finished)
    run = copy_run(finished, tmp_path, "elsewhere")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["storage"] == "sqlite:///study.db"
    if frozen != "relative":
        config["storage"] = f"sqlite:///{(finished / 'study.db').resolve()}"
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["resume", str(run), "--trials", "3", "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert _files(finished) == original, "the copy wrote into the directory it was copied from"
    mine = optuna.load_study(study_name="two", storage=f"sqlite:///{run / 'study.db'}")
    assert len(mine.trials) == 3


def test_a_trial_queued_again_after_a_kill_is_no_result(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{run / 'study.db'}")
    dead = study.trials[0]
    inherited = {**dead.user_attrs, "rungs": [{"rung": 0, "epochs": 0.25, "accuracy": 0.9999, "seconds": 1.0}],
                 "rung": 0, "top_rung": 1}  # what a multi-fidelity trial killed after its first rung carries
    study.enqueue_trial(dead.params, user_attrs=inherited)
    row = trials_frame(study).iloc[-1]
    assert row["state"] == "WAITING" and math.isnan(row["accuracy"]) and not row["provisional"]
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "waiting" in out and "0.9999" not in out


def _heed_signals() -> None:
    """In the child: SIGINT and SIGTERM at their defaults, even where this test runs in the background of a shell,
    which ignores them (and the command line keeps a signal its parent ignored ignored)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def interrupt(args: list[str], env: dict[str, str], ready: Callable[[str], bool], sig: int = signal.SIGINT,
              group: bool = True) -> tuple[int, str]:
    """Start the command line, send `sig` once `ready(stderr so far)` (to its process group, as Ctrl-C in a terminal
    does, or to it alone), and return its exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_heed_signals)
    err: list[str] = []
    reader = threading.Thread(target=lambda: [err.append(line) for line in proc.stderr], daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    try:
        while not ready("".join(err)):
            assert proc.poll() is None, f"it ended before it was interrupted:\n{''.join(err)}"
            assert time.monotonic() < deadline, f"never ready:\n{''.join(err)}"
            time.sleep(0.1)
        (os.killpg if group else os.kill)(proc.pid, sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    return code, "".join(err)


def a_run(tmp: Path, **changes: object) -> list[str]:
    """`run` of the tiny digits recipe, long enough to be interrupted (30 trials of 3 epochs)."""
    raw = tiny_recipe(tmp, **{"search.trials": 30, "train.epochs": 3, **changes})
    return ["run", str(_write(tmp, raw, "long.yaml"))]


def trials_started(err: str) -> bool:
    return "#0 " in err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_a_run_ends_it_with_one_line(tmp_path, env, sig, code):
    got, err = interrupt(a_run(tmp_path), env, trials_started, sig)
    assert got == code and "Traceback" not in err and "Exception ignored" not in err, err
    assert "interrupted; completed trials are saved" in err


def test_ctrl_c_while_the_base_trains_takes_the_new_run_directory_back(tmp_path, env):
    raw = compress(**{"space.base.epochs": 60})
    raw["output_dir"] = str(tmp_path / "runs")
    lock = tmp_path / "runs" / raw["name"] / "base.lock"
    got, err = interrupt(["run", str(_write(tmp_path, raw))], env, lambda _: lock.exists())
    assert got == 130 and "Traceback" not in err, err
    assert not any((tmp_path / "runs").iterdir()), "an interrupted start left its run directory"


@pytest.mark.slow
@pytest.mark.parametrize("sig, group, code", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
                         ids=["ctrl-c", "sigterm-to-the-parent-alone"])
def test_a_signal_ends_every_worker(tmp_path, env, sig, group, code):
    got, err = interrupt([*a_run(tmp_path), "--workers", "2"], env, trials_started, sig, group)
    assert got == code and "Traceback" not in err and "Exception ignored" not in err, err
    time.sleep(1)
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "long.yaml")], capture_output=True).stdout == b""


LINGERING = """
import threading, time
from search.study import interrupt
threading.Thread(target=lambda: time.sleep(600)).start()  # as Optuna's heartbeat thread, never told to stop
interrupt._pending.append(15)
print(interrupt.exit_code_after_interrupt())
"""


def test_a_thread_the_interrupt_left_running_does_not_keep_the_process_alive(env):
    proc = subprocess.run([sys.executable, "-c", LINGERING], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 143, proc.stderr


def test_there_are_enough_damages():
    assert len(DAMAGES) >= 10
