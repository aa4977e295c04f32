"""Spaces registered by name, in the manner of timm's model registry, and the capabilities a space declares."""

from __future__ import annotations

import json
from typing import Any, Callable, ClassVar, Iterator

import torch.nn as nn
from pydantic import BaseModel

from registry import Registry
from spaces.suggest import Suggest

Candidate = dict[str, Any]
Unit = dict[str, Any]


class Space:
    """A search space: `sample` draws a JSON-able candidate through a `Suggest`, `build` turns it into a network.
    Every registered space derives from it; the optional capabilities below
    have defaults, so the driver asks for them without probing.

    - `describe(candidate)`: one line for tables (default: the candidate as compact JSON);
    - `anchors(levels)`: Optuna parameters of candidates a new study evaluates first (default: none);
    - `units(candidate)`, `all_units()`, `unit_module(unit)`, `reference_candidate()`: a candidate's units (what a
      latency table is keyed by), every unit the space can produce, the module of one, and the network whose
      latency every other is compared with (a compression space's base) — where `lists_units` says it has them;
    - `teacher`: a trained network candidates may distil from (default: none); `teacher_for(candidate)`: the one
      that candidate distils from (default: `teacher`).
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    lists_units: ClassVar[bool] = False
    teacher: nn.Module | None = None

    def sample(self, suggest: Suggest) -> Candidate:
        raise NotImplementedError

    def build(self, candidate: Candidate) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def describe(candidate: Candidate) -> str:
        return json.dumps(candidate, separators=(",", ":"))

    def anchors(self, levels: int) -> list[dict[str, Any]]:
        return []

    def teacher_for(self, candidate: Candidate) -> nn.Module | None:
        return self.teacher

    def units(self, candidate: Candidate) -> list[Unit]:
        raise NotImplementedError(f"the {self.name!r} space does not list its units")

    def all_units(self) -> Iterator[Unit]:
        raise NotImplementedError(f"the {self.name!r} space does not list its units")

    def reference_candidate(self) -> Candidate:
        raise NotImplementedError(f"the {self.name!r} space does not list its units")

    @staticmethod
    def unit_module(unit: Unit) -> nn.Module:
        raise NotImplementedError("this space does not list its units")


SPACES: Registry[type[Space]] = Registry("space")


def register_space(name: str) -> Callable[[type[Space]], type[Space]]:
    """Class decorator that registers a space under `name`."""

    def wrap(cls: type[Space]) -> type[Space]:
        cls.name = name
        return SPACES.register(name)(cls)

    return wrap


def get_space(name: str) -> type[Space]:
    """The space class registered as `name`; `registry.UnknownName` listing the known ones otherwise."""
    return SPACES[name]
