"""A study's latency table: built for the recipe's space on this machine's engine (units measured against the
reference kernel, whole networks interleaved with the space's reference network, the model fitted and checked on
networks drawn as the study draws them), opened and vouched for, and kept once per machine.

`latency.table: auto` builds the table once per machine and engine: it is kept in the run directory and in a
machine-level cache keyed by everything that changes its numbers, so a second study of the same base on the same
machine reuses it. A table that failed its self-check or was measured under load keeps those marks wherever it goes,
and every study that opens it says so and screens nothing with it (unless `latency.trust: always`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from evaluators.latency import LatencyBackend
from evaluators.latency.engine_timer import EngineTimer
from evaluators.latency.table import LatencyTable, TableError, unit_key
from evaluators.latency.table_build import BuildReport, CheckReport, Network, Progress, build_table, check_table
from search.errors import UsageError
from search.latency.staircase import attach
from search.recipe.config import StudyConfig
from search.trial.locks import MachineLock, locked, say_stderr
from search.trial.steps import StepProgress
from spaces import Candidate, RandomSuggest, Space, Unit

TABLE_FILE = "latency_table.json"
STALE_DAYS = 14  # a table older than this is said to be stale: the machine under it may have changed


def require_units(space: Space) -> None:
    """Latency tables need a space that lists a candidate's units."""
    if not space.lists_units:
        raise UsageError(f"latency tables need a space that lists its units (blocks, compress); this study's space "
                         f"is {space.name!r}")


def distinct(units: Iterable[Unit]) -> dict[str, Unit]:
    """Units by key, first occurrence kept, order preserved."""
    out: dict[str, Unit] = {}
    for u in units:
        out.setdefault(unit_key(u), u)
    return out


def coverage(table: LatencyTable, space: Space) -> tuple[int, int, int]:
    """(units the space can produce, of them measured, of them with neither a measurement nor a measured neighbour
    to estimate them from): how much of the space the table covers."""
    pool = distinct(space.all_units())
    measured = sum(1 for key in pool if key in table.entries)
    lost = sum(1 for key, unit in pool.items() if key not in table.entries and table.estimate(unit) is None)
    return len(pool), measured, lost


def network(space: Space, candidate: Candidate, name: str | None = None) -> Network:
    """A candidate as a table sees it: its description, units and how to build it."""
    return Network(name or space.describe(candidate), space.units(candidate), lambda: space.build(candidate))


def reference_network(space: Space) -> Network:
    """The network every speed-up is over: a compression study's base, a blocks space's reference candidate."""
    return network(space, space.reference_candidate(), "reference network")


def drawn_candidates(space: Space, n: int, seed: int, fixed: dict[str, object] | None = None) -> list[Candidate]:
    """`n` candidates drawn as the study draws them (every policy of the recipe, on the staircase where the space has
    one; `fixed`: categorical choices to take instead, e.g. `{"policy": "group"}` before any table exists), with
    seeded uniform choices (seeds `seed`, `seed + 1`, ...)."""
    return [space.sample(RandomSuggest(seed + i, fixed)) for i in range(n)]


def sampled_units(space: Space, max_configs: int, samples: int, seed: int) -> tuple[dict[str, Unit], str]:
    """The units a table measures: every one the space can produce, or past `max_configs`, those of `samples`
    candidates drawn per group (before any table exists), and a sentence saying which."""
    pool = distinct(space.all_units())
    if len(pool) <= max_configs:
        return pool, f"all {len(pool)} unit configurations the space can produce"
    draws = drawn_candidates(space, samples, seed, {"policy": "group"})
    seen = distinct(u for c in [*draws, space.reference_candidate()] for u in space.units(c))
    return seen, (f"the {len(seen)} unit configurations of {samples} sampled candidates (the space has {len(pool)}, "
                  f"more than --max-configs {max_configs})")


def build_study_table(
    config: StudyConfig, space: Space, backend: LatencyBackend, *, max_configs: int = 2000, samples: int = 200,
    networks: int | None = None, holdout: int | None = None, seed: int = 0, progress: Progress | None = None,
) -> BuildReport:
    """Measure the recipe's units, fit the model on `networks` (default `latency.table_networks`) and check it on
    `holdout` (default `latency.table_holdout`) other networks, all drawn as the study draws them; each measurement holds the machine's latency lock, so studies on this machine pause their
    fine-tunes for it and take turns with the build instead of waiting for all of it."""
    require_units(space)
    lat = config.latency
    networks = lat.table_networks if networks is None else networks
    holdout = lat.table_holdout if holdout is None else holdout
    units, coverage = sampled_units(space, max_configs, samples, seed)
    table = LatencyTable(backend.name, backend.version(), backend.device(), lat.precision, lat.batch_size,
                         getattr(backend, "threads", None),
                         meta={"study": config.name, "input_shape": list(_input_shape(space)), "coverage": coverage})
    timer = EngineTimer(backend, lat.precision, lat.batch_size)

    def draw(measured: LatencyTable) -> tuple[list[Network], list[Network]]:
        if config.space.type == "compress":  # the staircase the study will sample from (and the greedy's predictor)
            attach(space, measured)
        drawn = [network(space, c) for c in drawn_candidates(space, networks + holdout, seed + 100_000)]
        return drawn[:networks], drawn[networks:]

    report = build_table(table, units, space.unit_module, _input_shape(space), reference_network(space), draw, timer,
                         progress, MachineLock().measuring)
    table.meta.update(units_measured=len(table.entries), units_skipped=len(report.skipped))
    return report


def check_study_table(config: StudyConfig, space: Space, table: LatencyTable, backend: LatencyBackend, *,
                      samples: int = 30, seed: int = 1_000_000, progress: Progress | None = None) -> CheckReport:
    """Predict and measure `samples` candidates drawn as the study draws them, each interleaved with the reference
    network (see `evaluators.latency.table_build.check_table`)."""
    require_units(space)
    if config.space.type == "compress":
        attach(space, table)
    timer = EngineTimer(backend, config.latency.precision, config.latency.batch_size)
    nets = [network(space, c) for c in drawn_candidates(space, samples, seed)]
    return check_table(table, reference_network(space), nets, _input_shape(space), timer, progress,
                       MachineLock().measuring)


def _input_shape(space: Space) -> tuple[int, int, int]:
    return (space.in_channels, space.image_size, space.image_size)


def open_table(path: str | Path, backend: LatencyBackend, precision: str, batch_size: int,
               field: str = "latency.table") -> LatencyTable:
    """Read a table and refuse it unless it was measured with this backend, device, precision and batch size; a
    missing or unreadable file is a UsageError naming `field`."""
    try:
        table = LatencyTable.load(path)
        table.check_matches(backend.name, backend.version(), backend.device(), precision, batch_size, str(path))
    except TableError as exc:
        raise UsageError(f"{field}: {exc}") from None
    return table


def doubts(table: LatencyTable) -> list[str]:
    """Why a table cannot be vouched for, and whether it is stale."""
    out = table.problems()
    created = table.protocol.get("created")
    if created:
        age = dt.datetime.now() - dt.datetime.fromisoformat(created)
        if age.days > STALE_DAYS:
            out.append(f"it is {age.days} days old (the machine under it may have changed)")
    return out


def vouch(table: LatencyTable, source: str, say: Callable[[str], None] = say_stderr) -> bool:
    """Say, loudly, why a table cannot be vouched for and how to rebuild it; returns whether it can."""
    found = doubts(table)
    if found:
        say(f"warning: latency table {source}: {'; '.join(found)}. Studies screen no candidate with it (unless "
            "latency.trust is always); rebuild it on a quiet machine with `slimsearch lut build STUDY.yaml --force`")
    return not found


def cache_dir() -> Path:
    """The machine-level cache of latency tables: `$SLIMSEARCH_CACHE/latency`, else `~/.cache/slimsearch/latency`."""
    root = os.environ.get("SLIMSEARCH_CACHE") or Path.home() / ".cache" / "slimsearch"
    return Path(root) / "latency"


def cache_key(config: StudyConfig, space: Space, backend: LatencyBackend) -> dict[str, Any]:
    """Everything that changes a table's numbers: the space's recipe block, the base's weights fingerprint, the input,
    the engine (name, version, device, threads), precision and batch size."""
    lat, spec = config.latency, config.space.model_dump(mode="json")
    return {
        "space": spec, "base": getattr(space, "base_spec", {}).get("sha256"),
        "input": [space.in_channels, config.data.image_size, config.data.dataset],
        "backend": backend.name, "version": backend.version(), "device": backend.device(),
        "threads": getattr(backend, "threads", None), "precision": lat.precision, "batch_size": lat.batch_size,
        "format": 2,
    }


def cache_path(key: dict[str, Any]) -> Path:
    """Where the machine-level cache keeps the table of `key`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['space']['type']}-{digest}.json"


def keep_in_cache(config: StudyConfig, space: Space, backend: LatencyBackend, table: LatencyTable) -> Path:
    """Save `table` in the machine cache, where every study of the same space, engine and device finds it; a table
    that cannot be vouched for keeps its marks there, so every study that reuses it says so."""
    key = cache_key(config, space, backend)
    table.meta["cache_key"] = key
    path = cache_path(key)
    table.save(path)
    return path


def study_table(config: StudyConfig, space: Space, backend: LatencyBackend,
                say: Callable[[str], None] = print) -> LatencyTable | None:
    """The study's latency table: none without `latency.table`; the named file, checked against this engine; or, for
    `auto`, the run directory's, else the machine cache's, else one built now (kept in both where it is clean)."""
    lat = config.latency
    if lat.table is None:
        return None
    if lat.table != "auto":
        table = open_table(lat.table, backend, lat.precision, lat.batch_size)
        vouch(table, str(lat.table))
        return table
    require_units(space)
    run_file = config.run_dir / TABLE_FILE
    with locked(config.run_dir / "table.lock"):
        if not run_file.is_file():
            cached = cache_path(cache_key(config, space, backend))
            if cached.is_file():
                say(f"latency table: reusing {cached} (same space, engine, device, precision and batch)")
                shutil.copyfile(cached, run_file)
            else:
                say(f"latency table: measuring the units of {config.name} on {backend.name} ({backend.device()}); "
                    "once per machine and engine (not counted in --timeout)")
                with StepProgress(f"latency table of {config.name}", "measurements") as step:
                    report = build_study_table(config, space, backend, seed=config.seed, progress=step)
                report.table.save(run_file)
                kept = keep_in_cache(config, space, backend, report.table)
                say(f"latency table: {len(report.table.entries)} units and {report.table.model.networks} networks in "
                    f"{report.seconds:.0f} s, kept in {kept}")
        table = open_table(run_file, backend, lat.precision, lat.batch_size)
    vouch(table, str(run_file))
    return table
