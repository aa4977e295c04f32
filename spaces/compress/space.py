"""The `compress` space (AMC-style): per prunable group, how much to keep; per layer, which rank; which precision.

A candidate is plain JSON — the pruning policy with its keep ratios (by group, or `{"*": share}` for one
global threshold), the residual blocks it drops (where the recipe searches depth), rank ratios by layer and the
factorization form of the k×k convs that are not spatial SVD, importance criterion, precision, and the base it
applies to (model, checkpoint, SHA-256 of its weights) — and `build(candidate)` cuts the same network from the same
base weights anywhere. A candidate without `policy` or `form` (made before they existed) builds as `group` with
spatial SVD.
"""

from __future__ import annotations

import bisect
import itertools
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from spaces.compress import units as geometry
from spaces.compress.compress import (
    check_exclusions,
    compress,
    factorizable_layers,
    global_keep_ratios,
    prunable_groups,
)
from spaces.compress.config import GREEDY_POLICIES, LOCAL_MOVES, LOCAL_SEEDS, CompressSpaceConfig
from spaces.compress.depth import DepthPolicy
from spaces.compress.describe import describe_policy, round_ratio
from spaces.compress.errors import CompressError
from spaces.compress.greedy import Policy, channel_costs, latency_greedy, loss_per_cost, mutate
from spaces.compress.lowrank import form_params, kxk_conv
from spaces.compress.models import build_model, fingerprint, load_checkpoint
from spaces.compress.prune import kept_channels
from spaces.contract import Candidate, Space, Unit, register_space
from spaces.suggest import Suggest


@register_space("compress")
class CompressSpace(Space):
    """Compression policies for one trained base network: pruning, low-rank factorization and precision."""

    Config = CompressSpaceConfig
    lists_units = True
    unit_module = staticmethod(geometry.unit_module)

    def __init__(
        self, config: CompressSpaceConfig, *, in_channels: int, num_classes: int, image_size: int,
        base: nn.Module | None = None, checkpoint: str | Path | None = None,
        calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
        sparse: dict[float, tuple[nn.Module, str | Path]] | None = None,
    ) -> None:
        """`base`: the trained network (else built from `config.base` and its checkpoint); `calibration`: a
        labelled training batch for the `taylor` importance; `sparse`: the base sparsity-trained at each λ of
        `config.base.sparsity`, with its checkpoint — candidates are then cut from these."""
        self.config = config
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size
        if base is None:
            checkpoint = checkpoint or config.base.checkpoint
            if checkpoint is None:
                raise CompressError(
                    "space.base.checkpoint: the compress space needs trained base weights; give a checkpoint, "
                    "or let `slimsearch run` train the base"
                )
            base = build_model(
                config.base.model, in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                kwargs=config.base.kwargs,
            )
            load_checkpoint(base, checkpoint)
        self.base = base.eval()
        self.calibration = calibration
        self.example_input = torch.zeros(1, in_channels, image_size, image_size)
        self.base_spec = {
            "model": config.base.model, "kwargs": config.base.kwargs,
            "checkpoint": str(checkpoint) if checkpoint else None, "sha256": fingerprint(self.base),
        }
        self.sparse = self._sparse_bases(sparse or {})
        check_exclusions(self.base, self.example_input, config.exclude)
        self.groups = prunable_groups(self.base, self.example_input, config.exclude)
        self.layers = geometry.layer_geometry(self.base, self.example_input, config.exclude)
        self.rank_layers = self._rank_layers() if config.rank else {}
        self.depth = DepthPolicy(self.base, self.example_input, config.drop, config.granularity, calibration,
                                 config.exclude) if config.drop else None
        self.offered: dict[str, list[int]] | None = None
        self._predict_units: Callable[[list[Unit]], float] | None = None
        self._costs: dict[str, list[float]] | None = None
        self._greedy: dict[float, Policy] = {}
        self._scale: float | None = None

    def _sparse_bases(
        self, given: dict[float, tuple[nn.Module, str | Path]]
    ) -> dict[float, tuple[nn.Module, dict[str, Any]]]:
        """λ → the base sparsity-trained at λ and the spec its candidates record."""
        wanted = self.config.base.sparsity
        if wanted is None:
            if given:
                raise CompressError("sparsity-trained bases were given, but the recipe has no space.base.sparsity")
            return {}
        missing = [l1 for l1 in wanted.lambdas if l1 not in given]
        if missing:
            raise CompressError(
                f"space.base.sparsity: no sparsity-trained base for λ {', '.join(f'{v:g}' for v in missing)}; "
                "`slimsearch run` trains them (base-l1-λ.pt in the run directory)"
            )
        out = {}
        for l1 in wanted.lambdas:
            model, path = given[l1]
            out[l1] = (model.eval(), {**self.base_spec, "checkpoint": str(path), "sha256": fingerprint(model),
                                      "l1": l1})
        return out

    @property
    def teacher(self) -> nn.Module:
        """The base network as trained (before any sparsity training)."""
        return self.base

    def teacher_for(self, candidate: Candidate) -> nn.Module:
        """Candidates distil from the base they were cut from."""
        return self._source(candidate)

    def _source(self, candidate: Candidate) -> nn.Module:
        """The base `candidate` was cut from, found by the SHA-256 of its weights."""
        held = {self.base_spec["sha256"]: (self.base, self.base_spec)}
        held.update({spec["sha256"]: (model, spec) for model, spec in self.sparse.values()})
        made_from = candidate.get("base", {}).get("sha256")
        if made_from not in held:
            have = ", ".join(f"{sha[:12]}… ({spec['checkpoint']})" for sha, (_, spec) in held.items())
            raise CompressError(
                f"candidate was made from base weights {str(made_from)[:12]}…, this space holds {have}; "
                "rebuild it with its own base"
            )
        return held[made_from][0]

    def _rank_layers(self) -> dict[str, str]:
        """Factorizable layers that would save parameters at the lowest rank ratio searched (in one of the
        recipe's forms, for a k×k conv) → their stage."""
        low, cfg = self.config.rank[0], self.config
        out = {}
        for name, stage in factorizable_layers(self.base, self.example_input).items():
            module = self.base.get_submodule(name)
            forms = cfg.rank_forms if kxk_conv(module) else [None]
            size = sum(p.numel() for p in module.parameters())
            if any(form_params(module, low, cfg.round_to, f) < size for f in forms):
                out[name] = stage
        return out

    def _keys(self, units: dict[str, str]) -> dict[str, str]:
        """Unit (group or layer) → the key its ratio is sampled under, per the recipe's granularity."""
        g = self.config.granularity
        return {u: (u if g == "group" else f"stage.{s}" if g == "stage" else "all") for u, s in units.items()}

    def width_choices(self) -> dict[str, list[int]]:
        """Group → every width (channels kept) the recipe's keep range, step and rounding can give it, ascending."""
        low, high = self.config.keep
        n = round((high - low) / self.config.keep_step)
        ratios = [low + self.config.keep_step * i for i in range(n + 1)]
        return {g.name: sorted({kept_channels(g.channels, g.channel_groups, r, self.config.round_to) for r in ratios})
                for g in self.groups}

    def _widths(self, candidate: Candidate) -> dict[str, int]:
        """Group → channels kept by a candidate's pruning policy."""
        keep = candidate["keep"]
        if candidate.get("policy", "group") == "global":
            keep = global_keep_ratios(self._source(candidate), self.example_input, float(keep["*"]),
                                      candidate["importance"], int(candidate.get("round_to", self.config.round_to)),
                                      self.calibration, self.config.exclude)
        return geometry.group_widths(self.groups, keep, int(candidate.get("round_to", self.config.round_to)))

    def units(self, candidate: Candidate) -> list[Unit]:
        """One unit per conv / linear layer at the widths the candidate prunes it to (see `spaces.compress.units`);
        a factorized layer is a `factorized` unit no latency table holds, so its network is not predicted."""
        out = geometry.policy_units(self._layers(candidate.get("drop") or ()), self._widths(candidate))
        for layer in sorted(candidate.get("rank") or {}):
            out.append({"block": "factorized", "in_channels": 0, "out_channels": 0, "stride": 1, "resolution": 0,
                        "out_resolution": 0, "options": {"layer": layer}})
        return out

    def _layers(self, dropped: Sequence[str]) -> list[geometry.LayerGeometry]:
        """The base's layers left once the `dropped` blocks are removed."""
        gone = self.depth.layers(dropped) if self.depth and dropped else set()
        return [layer for layer in self.layers if layer.name not in gone]

    def all_units(self) -> Iterator[Unit]:
        """Every unit a pruning policy of the recipe can produce (factorized layers are not tabled)."""
        return geometry.all_layer_units(self.layers, self.width_choices())

    def reference_candidate(self) -> Candidate:
        """The base itself, every group whole: what every speed-up of a compression study is over."""
        cfg = self.config
        return {"space": "compress", "base": dict(self.base_spec), "importance": cfg.importance[0],
                "round_to": cfg.round_to, "policy": "group", "keep": {g.name: 1.0 for g in self.groups}, "rank": {},
                "form": {}, "precision": cfg.precision[0], **({"drop": []} if self.depth else {})}

    def use_staircase(self, offered: dict[str, list[int]], predict_units: Callable[[list[Unit]], float]) -> None:
        """Sample from a latency staircase: each group keeps one of `offered[group]` widths (ascending, the lower
        edges of its latency steps, ending at its full width; `config.staircase` off: every width it can take), and
        `predict_units` gives a network's latency from its units (for the latency_greedy policy)."""
        missing = sorted(set(self.width_choices()) - set(offered))
        if missing:
            raise CompressError(f"the latency staircase has no widths for group(s) {missing}")
        self.offered = {g: sorted(ws) for g, ws in offered.items()} if self.config.staircase else self.width_choices()
        self._predict_units = predict_units

    def predicted_latency(self, widths: Mapping[str, int], dropped: Sequence[str] = ()) -> float:
        """The latency predicted for the base pruned to `widths`, less the `dropped` blocks (needs `use_staircase`)."""
        if self._predict_units is None:
            raise CompressError("no latency predictor: the space was given no latency table")
        return self._predict_units(geometry.policy_units(self._layers(dropped), widths))

    def predicted_base_latency(self) -> float:
        """The unpruned base's latency predicted by the same table: what every predicted speed-up divides."""
        return self.predicted_latency({g.name: g.channels for g in self.groups})

    def greedy_policy(self, speedup: float, local: tuple[int, int] | None = None) -> Policy:
        """The latency_greedy policy at a predicted `speedup` over the base (see `spaces.compress.greedy`): group →
        width, and the blocks dropped where the recipe searches depth. Channel importance is Taylor's |w·∂L/∂w| on
        the calibration batch (a first-order loss change, comparable across groups), else the recipe's first
        criterion with each group's scores divided by their mean; a block's is the loss its removal adds.
        `local` (moves, seed): the greedy_local policy — that greedy policy moved `moves` times at random (seeded),
        then walked on by the greedy, the moved groups and blocks held, until it is back at the target."""
        if self.offered is None:
            raise CompressError(
                "policy latency_greedy needs a latency table to predict with: set latency.table (a file from "
                "`slimsearch lut build`, or auto)"
            )
        if self._costs is None:
            self._costs = channel_costs(self.base, self.example_input, self.config.exclude, self.groups, self.layers,
                                        self.config.importance[0], self.calibration)
        full = {g: ws[-1] for g, ws in self.offered.items()}
        target_ms = self.predicted_latency(full) / speedup
        blocks = self.depth.greedy_blocks(self.groups, self._loss_per_cost()) if self.depth else None
        policy = self._greedy.get(speedup) or latency_greedy(self.offered, self._costs, self.predicted_latency,
                                                             target_ms, blocks)
        self._greedy[speedup] = policy
        if local is not None:
            moved, held = mutate(policy, self.offered, blocks or {}, local[0], random.Random(local[1]))
            policy = latency_greedy(self.offered, self._costs, self.predicted_latency, target_ms, blocks, moved, held)
        return policy[0], self.depth.in_order(policy[1]) if self.depth else []

    def _loss_per_cost(self) -> float:
        """The channel costs' scale in loss (measured once; see `spaces.compress.greedy.loss_per_cost`)."""
        if self._scale is None:
            if self.calibration is None:
                raise CompressError("space.drop: the latency greedy weighs blocks against channels on a calibration "
                                    "batch of training images; the space was given none")
            self._scale = loss_per_cost(self.base, self.example_input, self.groups, self.offered, self._costs,
                                        self.calibration, self.config.round_to, self.config.importance[0])
        return self._scale

    def _snap(self, group: str, width: int) -> int:
        """The narrowest offered width of `group` at least `width` wide (as fast as `width`, with more channels)."""
        ws = self.offered[group]
        return ws[min(bisect.bisect_left(ws, width), len(ws) - 1)]

    def _keep_of(self, widths: dict[str, int]) -> dict[str, float]:
        by_name = {g.name: g for g in self.groups}
        return {g: round_ratio(w / by_name[g].channels) for g, w in widths.items()}

    def _sample_keep(self, suggest: Suggest) -> dict[str, float]:
        """Per-group keep ratios: drawn per key of the recipe's granularity; on a staircase, group granularity draws
        an offered width per group (`edge.<group>`, its index) and coarser keys snap to the offered widths."""
        cfg = self.config
        if self.offered is not None and cfg.granularity == "group":
            return self._keep_of({g: ws[suggest.int(f"edge.{g}", 0, len(ws) - 1)] for g, ws in self.offered.items()})
        keys = self._keys({g.name: g.stage for g in self.groups})
        drawn = {k: round_ratio(suggest.float(f"keep.{k}", *cfg.keep, step=cfg.keep_step)) for k in dict.fromkeys(keys.values())}
        keep = {group: drawn[key] for group, key in keys.items()}
        if self.offered is None:
            return keep
        widths = geometry.group_widths(self.groups, keep, cfg.round_to)
        return self._keep_of({g: self._snap(g, w) for g, w in widths.items()})

    def sample(self, suggest: Suggest) -> Candidate:
        """Draw one policy; parameter names are stable (`keep.<group>`, `rank.<layer>`, `keep.stage.<res>`;
        `keep.global` where the recipe lists the global policy, `policy` and `form.<layer>` where it lists
        several policies or forms, `base.l1` where it sparsity-trains several bases)."""
        cfg = self.config
        spec = self.base_spec
        if self.sparse:
            lambdas = list(self.sparse)
            spec = self.sparse[suggest.categorical("base.l1", lambdas) if len(lambdas) > 1 else lambdas[0]][1]
        importance = suggest.categorical("importance", cfg.importance) if len(cfg.importance) > 1 else cfg.importance[0]
        policy = suggest.categorical("policy", cfg.policy) if len(cfg.policy) > 1 else cfg.policy[0]
        target: dict[str, Any] = {}
        if policy == "global":
            keep = {"*": round_ratio(suggest.float("keep.global", *cfg.keep, step=cfg.keep_step))}
        elif policy in GREEDY_POLICIES:
            target = {"speedup": round(suggest.float("greedy.speedup", *cfg.greedy_speedup), 3)}
            if policy == "greedy_local":
                target["local"] = {"moves": suggest.int("local.moves", 1, LOCAL_MOVES),
                                   "seed": suggest.int("local.seed", 0, LOCAL_SEEDS - 1)}
            local = (target["local"]["moves"], target["local"]["seed"]) if "local" in target else None
            widths, dropped = self.greedy_policy(target["speedup"], local)
            keep = self._keep_of(widths)
            target.update({"drop": dropped} if self.depth else {})
        else:
            keep = self._sample_keep(suggest)
        if self.depth and policy not in GREEDY_POLICIES:
            target["drop"] = self.depth.sample(suggest)
        rank: dict[str, float] = {}
        form: dict[str, str] = {}
        if cfg.rank is not None and self.rank_layers:
            rkeys = self._keys(self.rank_layers)
            rdrawn = {
                k: round_ratio(suggest.float(f"rank.{k}", *cfg.rank, step=cfg.rank_step))
                for k in dict.fromkeys(rkeys.values())
            }
            rank = {layer: rdrawn[key] for layer, key in rkeys.items() if rdrawn[key] < 1}
            form = self._sample_forms(suggest, {layer: rkeys[layer] for layer in rank})
        precision = suggest.categorical("precision", cfg.precision) if len(cfg.precision) > 1 else cfg.precision[0]
        return {
            "space": "compress", "base": dict(spec), "importance": importance, "round_to": cfg.round_to,
            "policy": policy, "keep": keep, "rank": rank, "form": form, "precision": precision, **target,
        }

    def _sample_forms(self, suggest: Suggest, keys: dict[str, str]) -> dict[str, str]:
        """Factorized k×k conv → its form, where not spatial SVD; one form drawn per rank key."""
        forms = self.config.rank_forms
        kxk = {layer: key for layer, key in keys.items() if kxk_conv(self.base.get_submodule(layer))}
        if len(forms) > 1:
            drawn = {k: suggest.categorical(f"form.{k}", forms) for k in dict.fromkeys(kxk.values())}
        else:
            drawn = {k: forms[0] for k in kxk.values()}
        return {layer: drawn[key] for layer, key in kxk.items() if drawn[key] != "spatial"}

    def anchors(self, levels: int) -> list[dict[str, Any]]:
        """Optuna parameters of uniform policies for a study to evaluate first (the uniform baselines of AMC and
        NetAdapt): one keep ratio for every group at `levels` values spread evenly inside the keep range, no
        factorization, the first importance criterion and form, at each precision. Uniform pruning is a strong
        front (benchmarks/RESULTS.md, searched vs uniform); starting from it, the sampler spends its budget on
        policies that beat it rather than on finding it. A recipe whose only policy is `global` gets the same
        shares as global thresholds. With several sparsity-trained bases, each gets the anchors."""
        cfg = self.config
        low, high = cfg.keep
        steps = round((high - low) / cfg.keep_step)
        ratios = sorted(
            {round_ratio(low + cfg.keep_step * round(steps * (i + 1) / (levels + 1))) for i in range(levels)}, reverse=True
        )
        uniform = "group" in cfg.policy
        keep_keys = dict.fromkeys(self._keys({g.name: g.stage for g in self.groups}).values()) if uniform else {}
        edges = uniform and self.offered is not None and cfg.granularity == "group"
        rank_keys = dict.fromkeys(self._keys(self.rank_layers).values()) if cfg.rank is not None else {}
        form_keys = dict.fromkeys(
            key for layer, key in self._keys(self.rank_layers).items() if kxk_conv(self.base.get_submodule(layer))
        ) if cfg.rank is not None and cfg.rank[1] < 1 and len(cfg.rank_forms) > 1 else {}
        bases: list[dict[str, Any]] = [{"base.l1": l1} for l1 in self.sparse] if len(self.sparse) > 1 else [{}]
        anchors = []
        for base, precision, ratio in itertools.product(bases, cfg.precision, ratios):
            params: dict[str, Any] = {**base}
            if edges:
                widths = geometry.group_widths(self.groups, {g.name: ratio for g in self.groups}, cfg.round_to)
                params.update({f"edge.{g}": self.offered[g].index(self._snap(g, w)) for g, w in widths.items()})
            else:
                params.update({f"keep.{k}": ratio for k in keep_keys} if uniform else {"keep.global": ratio})
            if len(cfg.policy) > 1:
                params["policy"] = "group"
            params.update(self.depth.anchor_params() if self.depth else {})
            params.update({f"rank.{k}": round_ratio(cfg.rank[1]) for k in rank_keys})
            params.update({f"form.{k}": cfg.rank_forms[0] for k in form_keys})
            if len(cfg.importance) > 1:
                params["importance"] = cfg.importance[0]
            if len(cfg.precision) > 1:
                params["precision"] = precision
            anchors.append(params)
        if "latency_greedy" in cfg.policy and self.offered is not None:
            for base, precision, speedup in itertools.product(bases, cfg.precision, cfg.greedy_anchors):
                low, high = cfg.greedy_speedup
                params = {**base, "greedy.speedup": min(max(float(speedup), low), high)}
                params.update({k: v for k, v in (("policy", "latency_greedy"), ("precision", precision))
                               if len(getattr(cfg, k)) > 1})
                params.update({"importance": cfg.importance[0]} if len(cfg.importance) > 1 else {})
                params.update({f"rank.{k}": round_ratio(cfg.rank[1]) for k in rank_keys})
                params.update({f"form.{k}": cfg.rank_forms[0] for k in form_keys})
                anchors.append(params)
        return anchors

    @staticmethod
    def describe(candidate: Candidate) -> str:
        """One line per candidate (see `spaces.compress.describe`)."""
        return describe_policy(candidate)

    def build(self, candidate: Candidate) -> nn.Module:
        """The base pruned and factorized as `candidate` says; equal candidates give equal networks."""
        if candidate.get("space") != "compress":
            raise CompressError(f"not a compress candidate (space {candidate.get('space')!r})")
        source = self._source(candidate)
        policy = "group" if candidate.get("policy") in GREEDY_POLICIES else candidate.get("policy", "group")
        keep = candidate["keep"]
        if policy == "global":
            if set(keep) != {"*"}:
                raise CompressError(f'candidate keep: the global policy holds one share as {{"*": share}}, got {keep}')
            keep = float(keep["*"])
        return compress(
            source, self.example_input, keep=keep, rank=candidate.get("rank") or None,
            round_to=int(candidate.get("round_to", self.config.round_to)), importance=candidate["importance"],
            calibration=self.calibration, exclude=self.config.exclude, policy=policy,
            form=candidate.get("form") or None, drop=candidate.get("drop") or (),
        )
