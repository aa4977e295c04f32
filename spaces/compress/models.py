"""Base networks by name: any torchvision or timm classification model, or any `module:callable`, with a checkpoint."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from spaces.compress.errors import CompressError

# Builder arguments that make a torchvision model usable here: no auxiliary training heads (their
# inputs would be pruned without them), and ViTs sized for the images they are given.
_TORCHVISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_names() -> list[str]:
    """Every torchvision classification model name."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(name: str, num_classes: int, image_size: int, kwargs: dict[str, Any]) -> nn.Module:
    """torchvision model `name` with random weights (nothing is downloaded) and `num_classes` outputs."""
    import torchvision

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise CompressError(f"unknown torchvision classification model {name!r}{hint}")
    args: dict[str, Any] = dict(_TORCHVISION_DEFAULTS.get(name, {}))
    if name.startswith("vit_"):
        args["image_size"] = image_size
    args.update(kwargs)
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise CompressError(f"base model 'torchvision:{name}' with arguments {args}: {exc}") from None


def timm_names() -> list[str]:
    """Every timm model architecture name."""
    import timm

    return timm.list_models()


def timm_model(name: str, in_channels: int, num_classes: int, image_size: int, kwargs: dict[str, Any]) -> nn.Module:
    """timm model `name` with random weights (`pretrained=False`: the hub is never asked) for this data;
    models with a fixed input size (ViT, Swin, ...) are sized for `image_size`."""
    import timm
    from timm.models import get_pretrained_cfg, is_model

    if not is_model(name):
        close = difflib.get_close_matches(name, timm_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise CompressError(f"unknown timm model {name!r}{hint}")
    cfg = get_pretrained_cfg(name)
    args: dict[str, Any] = {"img_size": image_size} if cfg is not None and cfg.fixed_input_size else {}
    args.update(kwargs)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise CompressError(f"base model 'timm:{name}' with arguments {args}: {exc}") from None


def stdlib_module(target: str) -> str | None:
    """The standard-library package `package.module:callable` names (None where it names another): Python's own
    library builds no network, and calling into it (`os:system`) runs what the recipe's arguments say."""
    top = target.partition(":")[0].split(".")[0]
    return top if top in sys.stdlib_module_names or top == "builtins" else None


def model_builder(target: str) -> Callable[..., Any]:
    """The callable `package.module:callable` names, refused before it is ever called where it cannot build an
    `nn.Module`: a standard-library or compiled function, a class that is no `nn.Module`, or a function whose return
    annotation is another type. (A recipe is code: importing its module runs that module.)"""
    stdlib = stdlib_module(target)
    if stdlib:
        raise CompressError(f"space.base.model: {target!r} is in Python's standard library ({stdlib}), which builds no "
                            "network; name a function or class that returns an nn.Module")
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CompressError(f"base model {target!r}: cannot import it ({exc})") from None
    if inspect.isclass(fn):
        if not issubclass(fn, nn.Module):
            raise CompressError(f"space.base.model: {target!r} is the class {fn.__name__}, not an nn.Module")
        return fn
    if not inspect.isfunction(fn):
        raise CompressError(f"space.base.model: {target!r} is a {type(fn).__name__}, not a Python function or an "
                            "nn.Module class that builds the network")
    try:
        returns = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve says nothing either way
        returns = None
    if inspect.isclass(returns) and not issubclass(returns, nn.Module):
        raise CompressError(f"space.base.model: {target!r} returns {returns.__name__} (its annotation), not an "
                            "nn.Module")
    return fn


def callable_model(
    target: str, in_channels: int, num_classes: int, image_size: int, kwargs: dict[str, Any]
) -> nn.Module:
    """Call `package.module:callable` (vetted by `model_builder`), passing num_classes / in_channels / image_size
    where it takes them."""
    fn = model_builder(target)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    args = {k: v for k, v in offered.items() if takes_any or k in params}
    args.update(kwargs)
    try:
        model = fn(**args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise CompressError(f"base model {target!r} with arguments {args}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise CompressError(f"space.base.model: {target!r} returned {type(model).__name__}, expected an nn.Module")
    return model


def adapt_in_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first 3-channel convolution by one taking `in_channels` (freshly initialized)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            conv = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, 1, module.bias is not None, module.padding_mode,
            )
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, conv)
            return model
    raise CompressError(f"cannot adapt the model to {in_channels} input channels: it has no 3-channel Conv2d")


def build_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """A base network from `torchvision:NAME`, `timm:NAME` or `package.module:callable`, random weights,
    for this data."""
    kwargs = dict(kwargs or {})
    prefix, sep, rest = name.partition(":")
    if not sep or not prefix or not rest:
        raise CompressError(
            f"base model {name!r}: expected 'torchvision:NAME', 'timm:NAME' or 'package.module:callable'"
        )
    if prefix == "torchvision":
        model = torchvision_model(rest, num_classes, image_size, kwargs)
        if in_channels != 3:
            adapt_in_channels(model, in_channels)
    elif prefix == "timm":
        model = timm_model(rest, in_channels, num_classes, image_size, kwargs)
    else:
        model = callable_model(name, in_channels, num_classes, image_size, kwargs)
    return model


SHOWN_KEYS = 5  # keys named in a checkpoint that does not fit; the rest are counted


def _some(keys: list[str]) -> str:
    """The first `SHOWN_KEYS` of `keys`, then how many more."""
    more = len(keys) - SHOWN_KEYS
    return ", ".join(keys[:SHOWN_KEYS]) + (f", … ({more} more)" if more > 0 else "")


def misfit(model: nn.Module, state: dict[str, Any]) -> str | None:
    """How a state dict fails to fit `model` (None where it fits): how many of the model's keys it lacks, how many
    it has that the model does not, and how many differ in shape — counted, with a few of each named."""
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    reshaped = [f"{k} {tuple(state[k].shape)} for {tuple(v.shape)}" for k, v in wanted.items()
                if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape]
    parts = [f"{len(missing)} of the model's {len(wanted)} keys missing ({_some(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({_some(unexpected)})" if unexpected else "",
             f"{len(reshaped)} of another shape ({_some(reshaped)})" if reshaped else ""]
    return "; ".join(p for p in parts if p) or None


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict (bare, or under a `state_dict` / `model` key) from `path` into `model`, strictly; a file
    that holds no state dict, or one of another architecture, is a CompressError saying how it differs."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load raises UnpicklingError, RuntimeError, EOFError, IndexError, ... for a bad file
        raise CompressError(
            f"checkpoint {path}: not a readable state dict (a damaged file, or one that pickles more than tensors, "
            "such as a whole model); save one with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CompressError(
            f"checkpoint {path}: holds a {type(state).__name__}, not a state dict (parameter names to tensors); save "
            "one with torch.save(model.state_dict(), path)"
        )
    why = misfit(model, state)
    if why:
        raise CompressError(f"checkpoint {path} does not fit the base model {type(model).__name__}: {why}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise CompressError(f"checkpoint {path} does not fit the base model: {exc}") from None
    return model


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, shapes, dtypes and values): identifies the base weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()
