"""What every trial of a study needs that is built once per process (the recipe, its data, its space and the latency
backend), and the two parts of it that need no scoring: the recipe's data and its latency backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluators.latency import BackendUnavailable, LatencyBackend, UnsupportedRequest, configured_backend
from evaluators.splits import DataBundle, load_data
from search.errors import UsageError
from search.latency.predictor import LatencyPredictor
from search.recipe.config import StudyConfig
from search.recipe.sections import LatencyConfig
from spaces import Space


@dataclass
class StudyContext:
    """Everything a trial needs that is built once per process."""

    config: StudyConfig
    data: DataBundle
    space: Space
    backend: LatencyBackend
    predictor: LatencyPredictor | None = None  # with a latency table


def recipe_data(config: StudyConfig) -> DataBundle:
    """The recipe's data set, split as the recipe says."""
    return load_data(
        config.data.dataset, config.data.root, config.data.image_size, config.data.val_fraction, config.seed
    )


def make_backend(lat: LatencyConfig, cache_dir: Path | None = None) -> LatencyBackend:
    """The latency backend a recipe's `latency:` section asks for (`auto` resolved); TensorRT keeps its engine
    and timing caches in `cache_dir`. A backend that cannot run here, or not at this precision, is a UsageError."""
    try:
        backend = configured_backend(lat.backend, cache_dir=cache_dir, threads=lat.threads, max_seconds=lat.max_seconds,
                                     target_cv=lat.target_cv, cuda_graph=lat.cuda_graph)
    except (BackendUnavailable, UnsupportedRequest) as exc:
        raise UsageError(f"latency.backend={lat.backend}: {exc}") from None
    if lat.precision not in backend.precisions:
        raise UsageError(
            f"latency.precision={lat.precision}: the {backend.name} backend on {backend.device()} runs "
            f"{', '.join(backend.precisions)}"
        )
    return backend
