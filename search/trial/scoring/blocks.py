"""Scoring of networks assembled from blocks: each is trained as it is built, scored in PyTorch at fp32 and timed
at the recipe's `latency.precision` (the base `Scoring`)."""

from __future__ import annotations

from search.trial.scoring.scoring import Scoring, register_scoring


@register_scoring("blocks")
class TrainedScoring(Scoring):
    """A `blocks` candidate: fine-tuned from its initial weights, nothing else to prepare or compare with."""
