"""What every trial of a study needs that is built once per process: the recipe, its data, its space (with a
compression study's trained base) and the latency backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluators.data import DataBundle, load_data
from evaluators.latency import BackendUnavailable, LatencyBackend, UnsupportedRequest, get_backend, resolve_backend_name
from evaluators.latency.table import LatencyTable
from search.config import StudyConfig
from search.errors import UsageError
from search.scoring import SCORINGS
from search.sections import LatencyConfig
from search.staircase import STAIRCASE_PNG, attach, plot_staircase, study_table
from spaces import Space, get_space
from spaces.compress import CompressError


@dataclass
class StudyContext:
    """Everything a trial needs that is built once per process."""

    config: StudyConfig
    data: DataBundle
    space: Space
    backend: LatencyBackend
    table: LatencyTable | None = None


def recipe_data(config: StudyConfig) -> DataBundle:
    """The recipe's data set, split as the recipe says."""
    return load_data(
        config.data.dataset, config.data.root, config.data.image_size, config.data.val_fraction, config.seed
    )


def build_space(config: StudyConfig, data: DataBundle) -> Space:
    """The recipe's space, shaped for the data's channels, classes and image size, with the inputs its scoring
    prepares (a compression space gets its trained base network)."""
    try:
        return get_space(config.space.type)(
            config.space, in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size,
            **SCORINGS[config.space.type].space_inputs(config, data),
        )
    except CompressError as exc:
        message = str(exc)
        raise UsageError(message if message.startswith("space.") else f"space: {message}") from None


def build_context(config: StudyConfig) -> StudyContext:
    """Load the data, instantiate the space for it, and open the latency backend."""
    config.train.resolved_device()  # a GPU asked for where there is none stops the start, not every trial
    data = recipe_data(config)
    space = build_space(config, data)
    backend = make_backend(config.latency, config.run_dir / "tensorrt")
    table = study_table(config, space, backend)
    if table is not None and config.space.type == "compress":
        stairs = attach(space, table)
        png = config.run_dir / STAIRCASE_PNG
        if not png.is_file():
            plot_staircase(stairs, space.offered, png, f"{config.name}: latency staircase per group ({table.backend}, "
                                                       f"{table.device}, batch {table.batch_size})")
    return StudyContext(config, data, space, backend, table)


def make_backend(lat: LatencyConfig, cache_dir: Path | None = None) -> LatencyBackend:
    """The latency backend a recipe's `latency:` section asks for (`auto` resolved); TensorRT keeps its engine
    and timing caches in `cache_dir`. A backend that cannot run here, or not at this precision, is a UsageError."""
    try:
        name = resolve_backend_name(lat.backend)
        if name == "tensorrt":
            backend = get_backend(name, cache_dir=cache_dir, min_seconds=lat.max_seconds, cuda_graph=lat.cuda_graph)
        elif name == "torch":
            backend = get_backend(name, threads=lat.threads, max_seconds=lat.max_seconds, target_cv=lat.target_cv,
                                  cuda_graph=lat.cuda_graph)
        elif name == "onnxruntime":
            backend = get_backend(name, threads=lat.threads, max_seconds=lat.max_seconds, target_cv=lat.target_cv)
        else:
            backend = get_backend(name)
    except (BackendUnavailable, UnsupportedRequest) as exc:
        raise UsageError(f"latency.backend={lat.backend}: {exc}") from None
    if lat.precision not in backend.precisions:
        raise UsageError(
            f"latency.precision={lat.precision}: the {backend.name} backend on {backend.device()} runs "
            f"{', '.join(backend.precisions)}"
        )
    return backend
