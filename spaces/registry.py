"""Spaces registered by name, in the manner of timm's model registry."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch.nn as nn
from pydantic import BaseModel

from spaces.suggest import Suggest

Candidate = dict[str, Any]


class Space(Protocol):
    """A search space: `sample` draws a JSON-able candidate, `build` turns it into a network. A space may also
    offer `describe(candidate)` (one line for tables) and `anchors(levels)` (the Optuna parameters of
    candidates a new study evaluates first)."""

    name: str

    def sample(self, suggest: Suggest) -> Candidate: ...

    def build(self, candidate: Candidate) -> nn.Module: ...


class SpaceFactory(Protocol):
    """What a registered space class offers: its recipe schema and a constructor."""

    Config: type[BaseModel]

    def __call__(self, config: Any, *, in_channels: int, num_classes: int, image_size: int) -> Space: ...


SPACES: dict[str, SpaceFactory] = {}


def register_space(name: str) -> Callable[[SpaceFactory], SpaceFactory]:
    """Class decorator that registers a space under `name`."""

    def wrap(cls: SpaceFactory) -> SpaceFactory:
        SPACES[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def get_space(name: str) -> SpaceFactory:
    """The space class registered as `name`, or a KeyError listing the known ones."""
    if name not in SPACES:
        raise KeyError(f"unknown space {name!r}; known spaces: {', '.join(sorted(SPACES))}")
    return SPACES[name]
