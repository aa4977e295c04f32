"""Network Slimming's sparsity training of a compression study's base (`space.base.sparsity`): before the trials,
the trained base goes on training for `epochs` with λ·Σ|γ| on every BatchNorm scale, once per λ, each cached in
the run directory as `base-l1-λ.pt`. The |γ| distribution before and after is drawn as `gamma.png` there and
summarised in the study's `sparsity` attribute, to judge λ by."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from evaluators.splits import DataBundle, Split
from evaluators.train import TrainSettings, batchnorm_scales, evaluate, train_model
from search.recipe.config import StudyConfig
from search.results.plots import SMALL, plot_gamma
from search.trial.scoring.base_network import base_settings, cached_training
from spaces.compress import fingerprint

GAMMA_PLOT = "gamma.png"

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def sparse_file(l1: float) -> str:
    """The run-directory file of the base sparsity-trained at `l1`, e.g. `base-l1-0.001.pt`."""
    return f"base-l1-{l1:g}.pt"


def sparsity_settings(config: StudyConfig, l1: float) -> TrainSettings:
    """The base's training settings with the sparsity section's epochs and learning rate and the penalty λ = `l1`."""
    sp = config.space.base.sparsity
    return dataclasses.replace(base_settings(config), epochs=sp.epochs, lr=sp.lr, bn_l1=l1)


def sparsity_train(config: StudyConfig, data: DataBundle, base: nn.Module) -> dict[float, tuple[nn.Module, Path]]:
    """λ → a copy of the trained `base` sparsity-trained at λ, and its file in the run directory (trained once,
    then loaded); draws `gamma.png` where one was trained or the picture is missing."""
    sp = config.space.base.sparsity
    source = fingerprint(base)
    out, trained = {}, False
    for l1 in sp.lambdas:
        model, path = copy.deepcopy(base), config.run_dir / sparse_file(l1)
        wanted = {"from_sha256": source, "l1": l1, "epochs": sp.epochs, "lr": sp.lr, "seed": config.seed}
        torch.manual_seed(config.seed)
        trained |= cached_training(
            path, wanted, model, lambda m, l1=l1: train_model(m, data, sparsity_settings(config, l1), seed=config.seed)
        )
        out[l1] = (model.eval(), path)
    picture = config.run_dir / GAMMA_PLOT
    if trained or not picture.is_file():
        plot_gamma(batchnorm_scales(base).numpy(), {l1: batchnorm_scales(m).numpy() for l1, (m, _) in out.items()},
                   picture, f"{config.name}: |γ| of every BatchNorm channel, {sp.epochs:g} epoch(s) of sparsity training",
                   SMALL)
    return out


def gamma_summary(scales: torch.Tensor) -> dict[str, float]:
    """Quantiles, mean and the share below `SMALL` (and below a tenth of it) of a set of |γ|."""
    g = scales.double()
    if not len(g):
        return {"scales": 0}
    q = torch.quantile(g, torch.tensor(QUANTILES, dtype=g.dtype)).tolist()
    return {
        "scales": len(g), "mean": float(g.mean()), **{f"p{round(p * 100):02d}": v for p, v in zip(QUANTILES, q)},
        **{f"below_{t:g}": float((g < t).double().mean()) for t in (SMALL, SMALL / 10)},
    }


def sparsity_record(
    config: StudyConfig, base: nn.Module, sparse: dict[float, tuple[nn.Module, dict[str, Any]]], val: Split
) -> dict[str, Any]:
    """The study's `sparsity` attribute: how the bases were trained, the |γ| summary before, and per λ the summary
    after, the validation accuracy and the checkpoint."""
    sp = config.space.base.sparsity
    return {
        "epochs": sp.epochs, "lr": sp.lr, "plot": GAMMA_PLOT, "before": gamma_summary(batchnorm_scales(base)),
        "after": {
            f"{l1:g}": {**gamma_summary(batchnorm_scales(model)), "accuracy": evaluate(model, val),
                        "checkpoint": Path(spec["checkpoint"]).name, "sha256": spec["sha256"]}
            for l1, (model, spec) in sparse.items()
        },
    }

