"""`slimsearch latency`: time one ONNX model, or candidates of a recipe, on a latency backend."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.commands.common import console
from search.errors import UsageError, file_problem

if TYPE_CHECKING:
    from evaluators.latency import LatencyStats
    from search.recipe.config import StudyConfig
    from search.recipe.sections import LatencyConfig

PRECISIONS = ("fp32", "fp16", "int8")  # evaluators.latency.PRECISIONS, named here so --help needs no engine


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `latency` sub-command to the parser."""
    p = sub.add_parser(
        "latency", help="measure the latency of an ONNX model, or of candidates of a recipe, on a backend",
        description="Time one ONNX model, or candidates of a study recipe (sampled, or a trial of its run), on a "
        "latency backend. Backend, precision, batch size and threads default to the recipe's latency section.",
    )
    p.add_argument("target", type=Path, nargs="?", help="MODEL.onnx, or a study recipe STUDY.yaml")
    p.add_argument("--compare", type=Path, nargs="+", metavar="MODEL.onnx",
                   help="time BASE.onnx OTHER.onnx ... interleaved in one process (base, other, ..., round after "
                        "round) and print each model's median, spread and speed-up over the first")
    p.add_argument("--rounds", type=int, default=7, help="--compare: rounds, each timing every model once")
    p.add_argument("--runs", type=int, default=100, help="--compare: timed runs of each model in a round")
    p.add_argument("--backend", help="auto, onnxruntime, tensorrt or torch (default: the recipe's, else auto)")
    p.add_argument("--precision", choices=PRECISIONS, help="default: the recipe's, else fp32")
    p.add_argument("--input-shape", metavar="C,H,W", help="input of one image (default: the ONNX input / the data)")
    p.add_argument("--batch-size", type=int, help="images per run (default: the ONNX batch / the recipe's)")
    p.add_argument("--threads", type=int, help="CPU threads of the engine (default: the recipe's, else 1)")
    p.add_argument("--max-seconds", type=float, help="time cap of the timed runs of one model")
    p.add_argument("--candidates", type=int, default=1, metavar="N", help="recipe: measure N sampled candidates")
    p.add_argument("--seed", type=int, default=0, help="recipe: seed of the first sampled candidate")
    p.add_argument("--trial", type=int, metavar="N", help="recipe: measure trial N of the recipe's run instead")
    p.add_argument("--num-classes", type=int, default=10, help="recipe with --input-shape: classifier outputs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe: override a recipe key (repeatable)")
    p.add_argument("--json", action="store_true", help="print a JSON list of the measurements instead of a table")
    p.set_defaults(func=run)


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    """`C,H,W` as a tuple of three positive ints; anything else is a UsageError."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"--input-shape {text!r}: expected C,H,W with three positive integers, e.g. 3,224,224")
    return shape  # type: ignore[return-value]


def onnx_input(path: Path) -> list[int | None]:
    """The first input's dimensions (None where symbolic); an unreadable file is a UsageError."""
    from evaluators.latency.base import onnx_input_dims

    try:
        return onnx_input_dims(path)
    except Exception as exc:  # onnx raises DecodeError, IndexError, OSError, ... for a bad file
        raise UsageError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def latency_settings(args: argparse.Namespace, base: LatencyConfig) -> LatencyConfig:
    """The recipe's (or default) latency section with the command-line flags applied."""
    from search.recipe.sections import LatencyConfig

    update = {k: v for k, v in {
        "backend": args.backend, "precision": args.precision, "batch_size": args.batch_size, "threads": args.threads,
        "max_seconds": args.max_seconds,
    }.items() if v is not None}
    try:
        return LatencyConfig.model_validate({**base.model_dump(), **update})
    except ValueError as exc:
        raise UsageError(f"bad latency setting: {exc}") from None


def measure_onnx(args: argparse.Namespace) -> list[tuple[str, LatencyStats]]:
    """Time the ONNX file named on the command line, under the machine's latency lock."""
    from search.recipe.sections import LatencyConfig
    from search.trial.context import make_backend
    from search.trial.locks import MachineLock

    dims = onnx_input(args.target)
    if len(dims) != 4:
        raise UsageError(f"{args.target}: expected an image model with a 4-d input (N, C, H, W), got {len(dims)}-d")
    shape = parse_shape(args.input_shape) or (tuple(dims[1:]) if None not in dims[1:] else None)
    if shape is None:
        raise UsageError(f"{args.target}: its input shape is not fixed ({dims}); pass --input-shape C,H,W")
    batch = args.batch_size or dims[0] or 1
    lat = latency_settings(args, LatencyConfig())
    lat = lat.model_copy(update={"batch_size": batch})
    backend = make_backend(lat)
    with MachineLock().measuring():
        return [(str(args.target), backend.measure(args.target, shape, lat.precision, lat.batch_size))]


def recipe_models(args: argparse.Namespace, config: StudyConfig) -> tuple[list[tuple[str, Any]], tuple[int, int, int]]:
    """(label, nn.Module) pairs to time, and the input shape of one image."""
    from search.latency.tables import drawn_candidates
    from search.results.record import TrialRecord
    from search.study.storage import open_study
    from search.trial.build import build_space
    from search.trial.context import recipe_data
    from spaces import get_space

    shape = parse_shape(args.input_shape)
    if shape is None:
        data = recipe_data(config)
        space = build_space(config, data)
        shape = data.input_shape
    else:
        if config.space.type != "blocks":
            raise UsageError(f"--input-shape works with blocks recipes; a {config.space.type!r} space is built for "
                             "its data's image size (leave --input-shape out)")
        if shape[1] != shape[2]:
            raise UsageError(f"--input-shape {args.input_shape}: a recipe's networks take square images (H = W)")
        space = get_space(config.space.type)(config.space, in_channels=shape[0], num_classes=args.num_classes,
                                             image_size=shape[1])
    if args.trial is not None:
        _, study = open_study(config.run_dir)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        candidate = TrialRecord.of(trials[args.trial]).candidate if args.trial in trials else None
        if candidate is None:
            raise UsageError(f"{config.run_dir}: no trial {args.trial} with a candidate")
        if args.input_shape:
            candidate = {**candidate, "in_channels": shape[0]}
        label = f"trial {args.trial}: {space.describe(candidate)}"
        return [(label, space.build(candidate))], shape
    if args.candidates < 1:
        raise UsageError(f"--candidates {args.candidates}: expected at least 1")
    models = []
    for i, candidate in enumerate(drawn_candidates(space, args.candidates, args.seed, {"policy": "group"})):
        label = f"seed {args.seed + i}: {space.describe(candidate)}"
        models.append((label, space.build(candidate)))
    return models, shape


def measure_recipe(args: argparse.Namespace) -> list[tuple[str, LatencyStats]]:
    """Time the recipe's sampled candidates or trial, under the machine's latency lock."""
    import torch

    from search.recipe.config import load_config
    from search.trial.context import make_backend
    from search.trial.locks import MachineLock

    config = load_config(args.target, args.overrides)
    lat = latency_settings(args, config.latency)
    models, shape = recipe_models(args, config)
    backend = make_backend(lat, config.run_dir / "tensorrt")
    out = []
    with MachineLock().measuring():
        for label, model in models:
            torch.manual_seed(0)
            out.append((label, backend.measure(model, shape, lat.precision, lat.batch_size)))
    return out


def compare(args: argparse.Namespace) -> int:
    """`slimsearch latency --compare BASE.onnx OTHER.onnx …`: every model timed interleaved with the first."""
    from evaluators.latency import resolve_backend_name
    from evaluators.latency.timing import interleaved
    from search.recipe.sections import LatencyConfig
    from search.trial.context import make_backend
    from search.trial.locks import MachineLock

    paths = list(args.compare)
    if args.target is not None:
        raise UsageError("--compare takes the models itself: slimsearch latency --compare BASE.onnx OTHER.onnx ...")
    if len(paths) < 2:
        raise UsageError("--compare needs a base and at least one other model: --compare BASE.onnx OTHER.onnx ...")
    if args.rounds < 3 or args.runs < 1:
        raise UsageError(f"--rounds {args.rounds} --runs {args.runs}: need at least 3 rounds of at least 1 run")
    for path in paths:
        why = file_problem(path)
        if why:
            raise UsageError(f"{path}: {why} (expected an ONNX model)")
        dims = onnx_input(path)
        if len(dims) != 4:
            raise UsageError(f"{path}: expected an image model with a 4-d input (N, C, H, W), got {len(dims)}-d")
    lat = latency_settings(args, LatencyConfig(backend="onnxruntime"))
    if resolve_backend_name(lat.backend) != "onnxruntime":
        raise UsageError(f"--compare times ONNX files in ONNX Runtime; --backend {lat.backend} cannot take them")
    backend = make_backend(lat)
    labels = [str(p) for p in paths]
    if len(set(labels)) != len(labels):
        raise UsageError("--compare: each model may be named once")
    with MachineLock().measuring():
        runners = {label: backend.runner(path, args.batch_size) for label, path in zip(labels, paths)}
        results = interleaved(runners, labels[0], rounds=args.rounds, runs=args.runs)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=1))
        return 0
    from rich.table import Table

    table = Table(title=f"onnxruntime {backend.version()} on {backend.device()}, interleaved: {args.rounds} rounds × "
                        f"{args.runs} runs", title_justify="left")
    for col in ("median ms", "range ms", "speed-up", "range"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("model", overflow="fold")
    for r in results:
        table.add_row(f"{r.median_ms:.4f}", f"{r.low_ms:.4f}–{r.high_ms:.4f}", f"{r.speedup:.2f}×",
                      f"{r.speedup_low:.2f}–{r.speedup_high:.2f}", r.name + (" (base)" if r.name == labels[0] else ""))
    console.print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch latency`; returns the exit code."""
    if args.compare:
        return compare(args)
    if args.target is None:
        raise UsageError("name MODEL.onnx or STUDY.yaml to time, or --compare BASE.onnx OTHER.onnx ...")
    from evaluators.latency import UnsupportedRequest
    from evaluators.precision import PrecisionError
    from evaluators.to_onnx import ExportError

    why = file_problem(args.target)
    if why:
        raise UsageError(f"{args.target}: {why} (expected MODEL.onnx or STUDY.yaml)")
    try:
        results = measure_onnx(args) if args.target.suffix == ".onnx" else measure_recipe(args)
    except (UnsupportedRequest, PrecisionError, ExportError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps([{"model": label, **stats.as_dict()} for label, stats in results], indent=1))
        return 0
    from rich.table import Table

    first = results[0][1]
    table = Table(title=f"{first.backend} {first.backend_version} on {first.device}, {first.precision}, "
                        f"batch {first.batch_size}", title_justify="left")
    for col in ("median ms", "p90 ms", "p99 ms", "CV", "runs", "build s"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("model", overflow="fold")
    for label, s in results:
        table.add_row(f"{s.median_ms:.4f}", f"{s.p90_ms:.4f}", f"{s.p99_ms:.4f}", f"{s.cv:.3f}", str(s.runs),
                      f"{s.build_seconds:.2f}", label)
    console.print(table)
    return 0
