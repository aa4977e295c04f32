"""The `compress` space (AMC-style): per prunable group, how much to keep; per layer, which rank; which precision.

A candidate is plain JSON — the pruning policy with its keep ratios (by group, or `{"*": share}` for one
global threshold), rank ratios by layer and the factorization form of the k×k convs that are not spatial SVD,
importance criterion, precision, and the base it applies to (model, checkpoint, SHA-256 of its weights) —
and `build(candidate)` cuts the same network from the same base weights anywhere. A candidate without
`policy` or `form` (made before they existed) builds as `group` with spatial SVD.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spaces.compress.compress import check_exclusions, compress, factorizable_layers, prunable_groups
from spaces.compress.config import CompressSpaceConfig
from spaces.compress.errors import CompressError
from spaces.compress.lowrank import form_params, kxk_conv
from spaces.compress.models import build_model, fingerprint, load_checkpoint
from spaces.registry import Candidate, Space, register_space
from spaces.suggest import Suggest


def _round(value: float) -> float:
    return round(float(value), 6)


@register_space("compress")
class CompressSpace(Space):
    """Compression policies for one trained base network: pruning, low-rank factorization and precision."""

    Config = CompressSpaceConfig

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
        self.rank_layers = self._rank_layers() if config.rank else {}

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
        if policy == "global":
            keep = {"*": _round(suggest.float("keep.global", *cfg.keep, step=cfg.keep_step))}
        else:
            keys = self._keys({g.name: g.stage for g in self.groups})
            drawn = {
                k: _round(suggest.float(f"keep.{k}", *cfg.keep, step=cfg.keep_step))
                for k in dict.fromkeys(keys.values())
            }
            keep = {group: drawn[key] for group, key in keys.items()}
        rank: dict[str, float] = {}
        form: dict[str, str] = {}
        if cfg.rank is not None and self.rank_layers:
            rkeys = self._keys(self.rank_layers)
            rdrawn = {
                k: _round(suggest.float(f"rank.{k}", *cfg.rank, step=cfg.rank_step))
                for k in dict.fromkeys(rkeys.values())
            }
            rank = {layer: rdrawn[key] for layer, key in rkeys.items() if rdrawn[key] < 1}
            form = self._sample_forms(suggest, {layer: rkeys[layer] for layer in rank})
        precision = suggest.categorical("precision", cfg.precision) if len(cfg.precision) > 1 else cfg.precision[0]
        return {
            "space": "compress", "base": dict(spec), "importance": importance, "round_to": cfg.round_to,
            "policy": policy, "keep": keep, "rank": rank, "form": form, "precision": precision,
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
            {_round(low + cfg.keep_step * round(steps * (i + 1) / (levels + 1))) for i in range(levels)}, reverse=True
        )
        uniform = "group" in cfg.policy
        keep_keys = dict.fromkeys(self._keys({g.name: g.stage for g in self.groups}).values()) if uniform else {}
        rank_keys = dict.fromkeys(self._keys(self.rank_layers).values()) if cfg.rank is not None else {}
        form_keys = dict.fromkeys(
            key for layer, key in self._keys(self.rank_layers).items() if kxk_conv(self.base.get_submodule(layer))
        ) if cfg.rank is not None and cfg.rank[1] < 1 and len(cfg.rank_forms) > 1 else {}
        bases: list[dict[str, Any]] = [{"base.l1": l1} for l1 in self.sparse] if len(self.sparse) > 1 else [{}]
        anchors = []
        for base, precision, ratio in itertools.product(bases, cfg.precision, ratios):
            params: dict[str, Any] = {**base}
            params.update({f"keep.{k}": ratio for k in keep_keys} if uniform else {"keep.global": ratio})
            if len(cfg.policy) > 1:
                params["policy"] = "group"
            params.update({f"rank.{k}": _round(cfg.rank[1]) for k in rank_keys})
            params.update({f"form.{k}": cfg.rank_forms[0] for k in form_keys})
            if len(cfg.importance) > 1:
                params["importance"] = cfg.importance[0]
            if len(cfg.precision) > 1:
                params["precision"] = precision
            anchors.append(params)
        return anchors

    @staticmethod
    def describe(candidate: Candidate) -> str:
        """One line per candidate, e.g. `l1 keep 0.62 [0.25–1.00] | rank 0.50 ×3 | int8`,
        `bn_scale global keep 0.60 | rank 0.50 ×3 tucker2 ×2 | fp32`; a candidate cut from a sparsity-trained base
        starts with its λ, `base λ=0.001 | bn_scale global keep 0.40 | fp32`."""
        keep = list(candidate["keep"].values()) or [1.0]
        l1 = candidate.get("base", {}).get("l1")
        parts = [] if l1 is None else [f"base λ={l1:g}"]
        if candidate.get("policy", "group") == "global":
            parts.append(f"{candidate['importance']} global keep {keep[0]:.2f}")
        else:
            parts.append(f"{candidate['importance']} keep {statistics.fmean(keep):.2f} [{min(keep):.2f}–{max(keep):.2f}]")
        if candidate.get("rank"):
            ranks = list(candidate["rank"].values())
            tucker = sum(f == "tucker2" for f in (candidate.get("form") or {}).values())
            parts.append(f"rank {statistics.fmean(ranks):.2f} ×{len(ranks)}{f' tucker2 ×{tucker}' if tucker else ''}")
        parts.append(candidate.get("precision", "fp32"))
        return " | ".join(parts)

    def build(self, candidate: Candidate) -> nn.Module:
        """The base pruned and factorized as `candidate` says; equal candidates give equal networks."""
        if candidate.get("space") != "compress":
            raise CompressError(f"not a compress candidate (space {candidate.get('space')!r})")
        source = self._source(candidate)
        policy = candidate.get("policy", "group")
        keep = candidate["keep"]
        if policy == "global":
            if set(keep) != {"*"}:
                raise CompressError(f'candidate keep: the global policy holds one share as {{"*": share}}, got {keep}')
            keep = float(keep["*"])
        return compress(
            source, self.example_input, keep=keep, rank=candidate.get("rank") or None,
            round_to=int(candidate.get("round_to", self.config.round_to)), importance=candidate["importance"],
            calibration=self.calibration, exclude=self.config.exclude, policy=policy,
            form=candidate.get("form") or None,
        )
