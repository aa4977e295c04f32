"""The sections of a study recipe (`data:`, `train:`, `latency:`, `search:`, `constraints:`), each a typed, validated
model whose unknown keys are errors; `search.recipe.config` assembles them into a `StudyConfig`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evaluators.latency import BACKENDS
from evaluators.splits import DATASETS
from evaluators.train import resolve_device
from registry import Registry, UnknownName
from search.errors import UsageError

MAX_EPOCHS = 1000  # fine-tunes and base trainings; more is a typo, and would run for days
MAX_BATCH = 65_536  # images per batch, for training and for latency
MAX_THREADS = 1024
MAX_TRIALS = 100_000


def known(registry: Registry[Any], name: str, alternative: str = "") -> None:
    """A validator's check that `name` is registered: ValueError with the registry's message otherwise."""
    try:
        registry[name]
    except UnknownName as exc:
        raise ValueError(f"{exc}{' (' + alternative + ')' if alternative else ''}") from None


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    """Recipe section `data:`: which images, at what size, and how many are held out to score candidates."""

    dataset: str = Field("digits", description="digits, or a dataset read from data.root")
    root: str | None = Field(None, description="local folder for datasets that are not bundled")
    image_size: int | None = Field(None, ge=4, le=1024, description="resize images to this side (None: native)")
    val_fraction: float = Field(0.2, gt=0, lt=0.9, description="share of training images held out to score candidates")

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        known(DATASETS, value)
        return value


class TrainConfig(Section):
    """Recipe section `train:`: the quick fine-tune every candidate gets before it is scored."""

    epochs: float = Field(3.0, gt=0, le=MAX_EPOCHS, description="fine-tune length in epochs (fractions allowed)")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    max_train_samples: int | None = Field(None, ge=1, description="train on at most this many images per trial")
    max_eval_samples: int | None = Field(None, ge=1, description="score on at most this many validation images")
    threads: int = Field(0, ge=0, le=MAX_THREADS, description="torch threads for training (0: all cores)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where fine-tunes run: auto is the CUDA GPU where torch sees one, else the CPU"
    )
    kd_alpha: float = Field(0.0, ge=0, le=1, description="weight of distillation from the base (compress space)")
    kd_temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature of the distillation loss")
    bn_batches: int = Field(
        20, ge=0, le=10_000, description="training batches that recalibrate BatchNorm before a compressed candidate's fine-tune"
    )

    def resolved_device(self) -> str:
        """`device` resolved to cpu or cuda; a GPU asked for where there is none is a UsageError."""
        try:
            return resolve_device(self.device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


class LatencyConfig(Section):
    """Recipe section `latency:`: the engine, precision and batch that latency is measured with."""

    backend: str = Field("auto", description="auto, onnxruntime, tensorrt or torch")
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    threads: int = Field(1, ge=1, le=MAX_THREADS, description="CPU threads the engine may use")
    max_seconds: float = Field(3.0, gt=0, le=3600, description="time cap for the timed rounds of one model")
    target_cv: float = Field(0.02, gt=0, le=1, description="stop timing once round medians vary less than this")
    cuda_graph: bool = Field(
        True, description="on a GPU, time replays of a CUDA graph of the forward (false: plain launches)"
    )
    table: str | None = Field(
        None, description="latency table to predict with: a JSON file from `slimsearch lut build`, or auto (built "
                          "once per machine and engine, kept in the run directory and the machine cache)",
    )
    budget_ms: float | None = Field(
        None, gt=0, description="screen, untrained, a candidate the latency table predicts slower than this"
    )
    table_networks: int = Field(24, ge=0, le=1000, description="whole networks a latency table's model is fitted on")
    table_holdout: int = Field(8, ge=0, le=1000, description="other networks a latency table checks itself on")
    trust: Literal["checked", "always"] = Field(
        "checked", description="checked: screen candidates only with a table that passed its self-check on a quiet "
                               "machine; always: with any table (its doubts are still said)",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "auto":
            known(BACKENDS, value, "or auto")
        return value

    @model_validator(mode="after")
    def _budget_needs_table(self) -> "LatencyConfig":
        if self.budget_ms is not None and self.table is None:
            raise ValueError(
                "budget_ms needs a latency table to predict with: set latency.table (see `slimsearch lut build`)"
            )
        return self


class FidelityConfig(Section):
    """Recipe section `search.fidelity:`: asynchronous successive halving on the front. Every candidate is scored at
    the first rung; one in the best 1/eta of the candidates that reached its rung (non-dominated sorting on accuracy
    at that rung and latency, ties by hypervolume contribution) goes on to the next, continuing its fine-tune."""

    rungs: list[float] = Field(
        min_length=2, description="fine-tune epochs at each rung, ascending; the last is the top rung and equals "
        "train.epochs; 0 scores after adaptive BN alone (compress space)",
    )
    eta: float = Field(3.0, gt=1, le=100, description="promotion factor: the best 1/eta of a rung's candidates go on")
    max_per_rung: list[int | None] | None = Field(
        None, description="at most this many candidates reach each rung (one entry per rung; null: no cap)"
    )
    report: Literal["reached", "top"] = Field(
        "reached", description="what the sampler is told of a candidate stopped below the top rung: its accuracy "
        "at the rung it reached (reached), or that it was pruned (top: only top-rung candidates have values)",
    )

    @field_validator("rungs")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if value[0] < 0 or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"rungs must be fine-tune epochs, ascending from 0 or more, got {value}")
        return value

    @model_validator(mode="after")
    def _one_cap_per_rung(self) -> "FidelityConfig":
        if self.max_per_rung is not None:
            if len(self.max_per_rung) != len(self.rungs):
                raise ValueError(f"max_per_rung needs one entry per rung ({len(self.rungs)}), got {self.max_per_rung}")
            if any(cap is not None and cap < 1 for cap in self.max_per_rung):
                raise ValueError("max_per_rung entries must be at least 1 (or null)")
        return self

    def cap(self, rung: int) -> int | None:
        """The most candidates that may reach `rung` (None: no cap)."""
        return None if self.max_per_rung is None else self.max_per_rung[rung]


class SearchConfig(Section):
    """Recipe section `search:`: the sampler and the trial budget."""

    sampler: Literal["tpe", "gp", "nsga2", "random"] = "tpe"
    trials: int = Field(30, ge=1, le=MAX_TRIALS, description="candidates to evaluate (completed trials)")
    timeout: float | None = Field(
        None, gt=0, description="stop starting new trials this many seconds after the run starts (preparing the base "
                                "network and a latency table count)"
    )
    startup_trials: int = Field(10, ge=0, le=MAX_TRIALS, description="random trials before TPE or GP models the space")
    population_size: int = Field(16, ge=2, le=10_000, description="NSGA-II population")
    anchors: int = Field(
        3, ge=0, le=100, description="compress space: uniform policies evaluated first, at this many keep ratios per precision"
    )
    max_consecutive_failures: int = Field(5, ge=1, le=MAX_TRIALS, description="stop the study after this many failed trials in a row")
    heartbeat_interval: int = Field(
        10, ge=1, le=3600, description="seconds between a running trial's heartbeats; a trial silent for 3 intervals is retried"
    )
    fidelity: FidelityConfig | None = Field(None, description="multi-fidelity search (successive halving); null: off")


class ConstraintsConfig(Section):
    """Limits a candidate must meet to be feasible; infeasible trials are never on the front."""

    latency_ms: float | None = Field(None, gt=0, description="maximum median latency in milliseconds")
    speedup: float | None = Field(
        None, gt=1, le=1000, description="compress space: minimum speed-up over the base, measured on the study's engine"
    )
    params: int | None = Field(None, ge=1, description="maximum number of parameters")
    accuracy: float | None = Field(None, ge=0, le=1, description="minimum validation accuracy")
