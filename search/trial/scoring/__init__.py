"""The scoring layer: how a study (and export, with the same code) scores a candidate. One `Scoring` per kind of
space, registered under the space's name (`SCORINGS`)."""

from search.trial.scoring import blocks, compressed  # noqa: F401  (register the scorings of the built-in spaces)
from search.trial.scoring.scoring import SCORINGS, Scoring, register_scoring, scoring_for, train_settings

__all__ = ["SCORINGS", "Scoring", "register_scoring", "scoring_for", "train_settings"]
