"""The frozen recipe of a run directory: written once, compared with the recipe on every resume.

Only the keys in `MAY_CHANGE_ON_RESUME` (how long to search, how to run it) may differ; any other
change would mix results of two different studies, so it is refused with the difference named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from search.errors import ConfigError
from search.recipe.config import StudyConfig, validate_config
from search.recipe.yamlfile import read_yaml

CONFIG_FILE = "config.yaml"
MAY_CHANGE_ON_RESUME = frozenset(
    {"search.trials", "search.timeout", "search.max_consecutive_failures", "search.heartbeat_interval",
     "train.device"}
)
IDENTITY = frozenset({"name", "output_dir"})  # they locate the run directory, so they match by construction


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as `{dotted.key: leaf}` (list items are numbered: `space.stages.1.width`)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list) and data and all(isinstance(v, (dict, list)) for v in data):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(frozen: dict[str, Any], recipe: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`{key: (frozen value, recipe value)}` for every leaf that differs."""
    a, b = flatten(frozen), flatten(recipe)
    missing = object()
    out = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out[key] = (None if va is missing else va, None if vb is missing else vb)
    return out


def _show(value: Any) -> str:
    if not isinstance(value, str):
        return json.dumps(value)
    return display_url(value) if "://" in value else value


def display_url(url: str) -> str:
    """A storage URL safe to print: any password replaced by ***."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


OWN_DATABASE = "study.db"  # the default storage: SQLite in the run directory


def run_dir_storage(run_dir: Path) -> str:
    """The default storage: SQLite `study.db` inside the run directory, as an absolute URL to open."""
    return f"sqlite:///{(Path(run_dir) / OWN_DATABASE).resolve()}"


def sqlite_file(url: str) -> tuple[Path, str] | None:
    """The file of a SQLite URL and its query string (None for another database, or SQLite in memory); a relative
    path is as SQLAlchemy reads it, relative to the working folder."""
    if not url.startswith("sqlite:///"):
        return None
    path, mark, query = url.removeprefix("sqlite:///").partition("?")
    if not path or path == ":memory:":
        return None
    return Path(path), mark + query


def portable_storage(url: str, run_dir: Path) -> str:
    """The storage URL as config.yaml keeps it: a SQLite file inside the run directory relative to that directory
    (`sqlite:///study.db`), so a copied or moved run directory opens its own database; any other URL as given."""
    found = sqlite_file(url)
    if found is None:
        return url
    path, query = found
    try:
        inside = path.resolve().relative_to(Path(run_dir).resolve())
    except ValueError:
        return url
    return f"sqlite:///{inside.as_posix()}{query}"


def located_storage(url: str | None, run_dir: Path, name: str) -> str | None:
    """The storage URL frozen in the config.yaml of the run directory now at `run_dir`, to open: None where it is
    the directory's own `study.db`. A relative SQLite path is relative to `run_dir`; an absolute one ending in
    `NAME/study.db` is how earlier versions froze the directory's own database, so it is taken for this directory's
    own (an old run directory that was copied or moved opens its own database, not the one it was copied from)."""
    found = None if url is None else sqlite_file(url)
    if found is None:
        return url
    path, query = found
    if path.is_absolute() and path.name == OWN_DATABASE and path.parent.name == name:
        return None
    path = (Path(run_dir) / path).resolve()
    return None if path == (Path(run_dir) / OWN_DATABASE).resolve() else f"sqlite:///{path}{query}"


def frozen_form(config: StudyConfig, storage: str) -> dict[str, Any]:
    """What is written to config.yaml: the resolved recipe with its storage URL (relative to the run directory where
    it is a SQLite file inside it)."""
    data = config.dump()
    data["storage"] = portable_storage(storage, config.run_dir)
    return data


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write YAML through a temporary file, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def read_frozen(path: Path) -> StudyConfig:
    """The recipe frozen at `path`; a damaged or hand-broken file is a ConfigError that says so."""
    try:
        raw = read_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise ConfigError(f"{path}: the frozen recipe is not readable YAML ({exc})") from None
    return validate_config(raw, str(path))


def read_run_config(run_dir: Path) -> StudyConfig:
    """The recipe frozen in the run directory at `run_dir`, located there (a copied or moved directory keeps its
    study's name), its storage as `located_storage` reads it."""
    config = read_frozen(Path(run_dir) / CONFIG_FILE)
    config.locate(run_dir)
    config.storage = located_storage(config.storage, Path(run_dir), config.name)
    return config


def make_run_dir(config: StudyConfig) -> None:
    """Create the run directory; one that cannot be created is a ConfigError naming `output_dir`."""
    try:
        config.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"output_dir: cannot create the run directory {config.run_dir} ({exc.strerror or exc}); write a folder "
            "this user can create run directories in, e.g. output_dir: runs"
        ) from None


def changes(config: StudyConfig, storage: str) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The frozen form of the run directory's recipe (empty where there is none) and its differences from the
    recipe (`{key: (frozen value, recipe value)}`), the keys that locate the run directory left out."""
    path = config.run_dir / CONFIG_FILE
    if not path.is_file():
        return {}, {}
    try:
        frozen = read_run_config(config.run_dir)
    except ConfigError as exc:
        raise ConfigError(f"{path} no longer validates, so this study cannot be resumed: {exc}") from None
    theirs = frozen_form(frozen, frozen.storage or storage)
    changed = differences(theirs, frozen_form(config, storage))
    return theirs, {k: v for k, v in changed.items() if k.split(".")[0] not in IDENTITY}


def refused_changes(config: StudyConfig, storage: str) -> dict[str, tuple[Any, Any]]:
    """The differences from the recipe frozen in its run directory that a resume may not make."""
    return {k: v for k, v in changes(config, storage)[1].items() if k not in MAY_CHANGE_ON_RESUME}


def refusal(config: StudyConfig, refused: dict[str, tuple[Any, Any]]) -> ConfigError:
    """The error for a recipe that would change a study with results: every refused difference, and what to do."""
    path = config.run_dir / CONFIG_FILE
    lines = [f"{key}: {_show(old)} in {path}, {_show(new)} in the recipe" for key, (old, new) in refused.items()]
    return ConfigError(
        f"the recipe differs from the study in {config.run_dir}:\n  " + "\n  ".join(lines)
        + f"\nresume with the same recipe, or start a new study with --set name={config.name}-2"
    )


def check_and_freeze(config: StudyConfig, storage: str, evaluated: Callable[[], int] = lambda: 1) -> Path:
    """Freeze the recipe into a new run directory, or check it against the frozen one of an existing
    directory: keys that may change on resume are updated; any other difference is a ConfigError, unless
    `evaluated()` says the study has no evaluated trial yet, so the corrected recipe takes the old one's place
    (the advice "fix the recipe and resume" after trials that all failed)."""
    make_run_dir(config)
    path = config.run_dir / CONFIG_FILE
    mine = frozen_form(config, storage)
    if not path.is_file():
        write_atomically(path, mine)
        return path
    try:
        theirs, changed = changes(config, storage)
    except ConfigError:
        if evaluated() > 0:
            raise
        write_atomically(path, mine)  # a recipe frozen by an older version, with no result to keep
        return path
    refused = {k: v for k, v in changed.items() if k not in MAY_CHANGE_ON_RESUME}
    if refused and evaluated() > 0:
        raise refusal(config, refused)
    if changed:
        write_atomically(path, {**mine, **{k: theirs[k] for k in IDENTITY}})
    return path


LEFTOVERS = ("study.db", "study.db-journal", "base.lock", "anchors.lock", "artifacts", "tensorrt", "ray")  # a start makes


def remove_failed_start(run_dir: Path, kept: frozenset[str] = frozenset()) -> None:
    """Take back a run directory this process created (or first froze a recipe in) and could not start a study in:
    its frozen recipe, the study database it created (no trial ran in it), the empty lock files and folders a start
    leaves, then the directory itself where nothing else is in it (a trained base network, for one, is kept for the
    next start). Names in `kept`, there before the start, are left alone."""
    (run_dir / CONFIG_FILE).unlink(missing_ok=True)
    for name in LEFTOVERS:
        if name in kept:
            continue
        path = run_dir / name
        try:
            if path.is_dir():
                path.rmdir()
            elif path.is_file() and (name.startswith("study.db") or path.stat().st_size == 0):
                path.unlink()
        except OSError:
            pass  # not empty, or another process holds it: it stays
    try:
        run_dir.rmdir()
    except OSError:
        pass
