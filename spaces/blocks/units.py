"""The geometry of a `blocks` network as a list of units — stem, every block, head, classifier — each with its
block name, channels, stride and options. `BlockNet` is built from this list, and latency tables are keyed by
the same units at their input resolution, so a table measures exactly the modules a network is made of."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import torch.nn as nn

from spaces.blocks.library import BLOCKS
from spaces.contract import Candidate, Unit
from spaces.layers import ConvBNAct


def _unit(block: str, cin: int, cout: int, stride: int, options: dict[str, Any]) -> Unit:
    return {"block": block, "in_channels": cin, "out_channels": cout, "stride": stride, "options": dict(options)}


def layout(candidate: Candidate) -> list[Unit]:
    """The units of a candidate's network, in order, without resolutions."""
    ch = candidate["stem"]["width"]
    units = [_unit("stem", candidate["in_channels"], ch, candidate["stem"]["stride"], {"kernel_size": 3})]
    for stage in candidate["stages"]:
        for i in range(stage["depth"]):
            units.append(_unit(stage["block"], ch, stage["width"], stage["stride"] if i == 0 else 1, stage["options"]))
            ch = stage["width"]
    if candidate["head_width"]:
        units.append(_unit("head", ch, candidate["head_width"], 1, {"kernel_size": 1}))
        ch = candidate["head_width"]
    units.append(_unit("classifier", ch, candidate["num_classes"], 1, {}))
    return units


def out_resolution(block: str, resolution: int, stride: int) -> int:
    """A unit's output side: ⌈side / stride⌉, 1 after the classifier's global pool."""
    return 1 if block == "classifier" else (resolution - 1) // stride + 1


def at_resolution(units: list[Unit], image_size: int) -> list[Unit]:
    """The units with their input and output resolution, for an `image_size` input."""
    res, out = image_size, []
    for unit in units:
        nxt = out_resolution(unit["block"], res, unit["stride"])
        out.append({**unit, "resolution": res, "out_resolution": nxt})
        res = nxt
    return out


def unit_params(unit: Unit) -> int:
    """A unit's parameter count in closed form, without building it."""
    block, cin, cout, stride = unit["block"], unit["in_channels"], unit["out_channels"], unit["stride"]
    if block in ("stem", "head"):
        return cin * cout * unit["options"]["kernel_size"] ** 2 + 2 * cout
    if block == "classifier":
        return cin * cout + cout
    return BLOCKS[block].param_count(cin, cout, stride, **unit["options"])


def network_size(units: list[Unit]) -> tuple[int, int]:
    """(parameters, feature-map values of one image) of a network's units placed at their resolutions: what
    building and running it takes, known before any tensor is allocated."""
    params = sum(unit_params(u) for u in units)
    activations = sum(u["out_channels"] * u["out_resolution"] ** 2 for u in units)
    return params, activations


def unit_module(unit: Unit) -> nn.Module:
    """The module a unit stands for: ConvBNAct for the stem and head, the registered block, or global pool +
    linear for the classifier."""
    block, cin, cout, stride = unit["block"], unit["in_channels"], unit["out_channels"], unit["stride"]
    if block in ("stem", "head"):
        return ConvBNAct(cin, cout, unit["options"]["kernel_size"], stride)
    if block == "classifier":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, cout))
    return BLOCKS[block](cin, cout, stride, **unit["options"])


def _option_sets(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(choices)
    return [dict(zip(names, values)) for values in itertools.product(*(choices[n] for n in names))]


def enumerate_units(space: Any) -> Iterator[Unit]:
    """Every unit a `blocks` space can produce: each block × option set × (in, out) width pair × stride at its
    stage's input resolution, repeats of a stage at its output resolution, and the stem, head and classifier
    for every width that can feed them. Widths step by `round_to`."""
    cfg = space.config

    def widths(rng: tuple[int, int]) -> list[int]:
        return list(range(rng[0], rng[1] + 1, cfg.round_to))

    def placed(units: list[Unit], res: int) -> Iterator[Unit]:
        for u in units:
            yield {**u, "resolution": res, "out_resolution": out_resolution(u["block"], res, u["stride"])}

    res = space.image_size
    prev = widths(cfg.stem_width)
    yield from placed([_unit("stem", space.in_channels, w, cfg.stem_stride, {"kernel_size": 3}) for w in prev], res)
    res = (res - 1) // cfg.stem_stride + 1
    for stage in cfg.stages:
        ws = widths(stage.width)
        out_res = (res - 1) // stage.stride + 1
        for block in cfg.blocks:
            for options in _option_sets(space.block_options(block)):
                yield from placed([_unit(block, cin, w, stage.stride, options) for cin in prev for w in ws], res)
                if stage.depth[1] > 1:
                    yield from placed([_unit(block, w, w, 1, options) for w in ws], out_res)
        prev, res = ws, out_res
    if cfg.head_width:
        yield from placed([_unit("head", cin, cfg.head_width, 1, {"kernel_size": 1}) for cin in prev], res)
        prev = [cfg.head_width]
    yield from placed([_unit("classifier", cin, space.num_classes, 1, {}) for cin in prev], res)
