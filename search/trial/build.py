"""What a process builds once before its first trial: the study's context (data, space, backend, latency predictor)
and its objective. Kept apart from `search.trial.context` so that the scorings can read the context while the space is
built through them (a compression space gets its trained base from its scoring's `space_inputs`)."""

from __future__ import annotations

from dataclasses import dataclass

from evaluators.latency import LatencyBackend
from evaluators.latency.engine_timer import EngineTimer
from evaluators.latency.table import LatencyTable
from evaluators.splits import DataBundle
from search.errors import UsageError
from search.latency.predictor import LatencyPredictor
from search.latency.staircase import STAIRCASE_PNG, attach, plot_staircase
from search.latency.tables import coverage, study_table
from search.recipe.config import StudyConfig
from search.trial.context import StudyContext, make_backend, recipe_data
from search.trial.locks import say_stderr
from search.trial.objective import Objective
from search.trial.rungs import RungObjective
from search.trial.scoring import SCORINGS
from search.trial.startup import check_engine, check_training_lengths
from spaces import Space, get_space
from spaces.compress import CompressError


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


@dataclass(frozen=True)
class SamplingSpace:
    """The space as the sampler sees it, and the latency table that predicts it (a compress space with a table
    samples from the table's staircase). Built once per study run; the Ray driver ships it to its workers."""

    space: Space
    table: LatencyTable | None


def sampling_space(config: StudyConfig, data: DataBundle, backend: LatencyBackend | None) -> SamplingSpace:
    """The recipe's space for `data` with its latency table attached (`latency.table`, measured on `backend`,
    which may be None only without one), and the staircase picture in the run directory."""
    check_training_lengths(config, data)
    if backend is not None:
        check_engine(config, backend)
    space = build_space(config, data)
    if config.latency.table is None:
        return SamplingSpace(space, None)
    if backend is None:
        raise ValueError("a recipe with latency.table needs its backend to open the table")
    table = study_table(config, space, backend)
    if table is not None and config.space.type == "compress":
        stairs = attach(space, table)
        png = config.run_dir / STAIRCASE_PNG
        if not png.is_file():
            plot_staircase(stairs, space.offered, png, f"{config.name}: latency staircase per group ({table.backend}, "
                                                       f"{table.device}, batch {table.batch_size})")
    return SamplingSpace(space, table)


def build_context(config: StudyConfig, sampling: SamplingSpace | None = None) -> StudyContext:
    """Load the data, open the latency backend and build the sampling space for them, or take the one a Ray
    driver built (`sampling`)."""
    config.train.resolved_device()  # a GPU asked for where there is none stops the start, not every trial
    data = recipe_data(config)
    backend = make_backend(config.latency, config.run_dir / "tensorrt")
    sampling = sampling or sampling_space(config, data, backend)
    return StudyContext(config, data, sampling.space, backend, predictor(config, sampling, backend))


def predictor(config: StudyConfig, sampling: SamplingSpace, backend: LatencyBackend) -> LatencyPredictor | None:
    """The study's latency predictor (None without a table): the table's milliseconds are its reference kernel's
    as timed in this process now, so a prediction in ms describes the machine as it is."""
    if sampling.table is None:
        return None
    lat = config.latency
    limits = [lat.budget_ms, config.constraints.latency_ms, config.constraints.speedup]
    if any(v is not None for v in limits):
        total, _, lost = coverage(sampling.table, sampling.space)
        if lost:
            say_stderr(f"warning: the latency table cannot predict {lost} of the space's {total} unit configurations "
                       "(no measured unit of their block, stride, options and resolution): candidates with them are "
                       "trained without the latency limits' check; rebuild it with a larger --max-configs")
    reference_ms = EngineTimer(backend, lat.precision, lat.batch_size).reference_ms()
    return LatencyPredictor(sampling.table, sampling.space, reference_ms, lat.trust)


def make_objective(ctx: StudyContext) -> Objective:
    """The study's objective: one fine-tune per candidate, or rungs of them with `search.fidelity`."""
    if ctx.config.search.fidelity is None:
        return Objective(ctx)
    return RungObjective(ctx)
