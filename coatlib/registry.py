"""One registry for every model in coatlib.

A model family registers a builder per name with ``@register_model``; users
build with ``create_model(name, ...)`` and browse with ``list_models()``.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator: register ``fn`` under ``name`` (default: the function's name)."""

    def wrap(f):
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def _load_families() -> None:
    # Importing the model package runs every family's @register_model.
    import coatlib.models  # noqa: F401


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob pattern."""
    _load_families()
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def create_model(
    name: str,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] = 224,
    in_chans: int = 3,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model.

    ``overrides`` reach the family's constructor (e.g. ``layout="C-T-T-T"`` for
    CoAtNet, ``drop_path_rate=0.1``). ``num_classes`` defaults to 1000, or to the
    classes of the pretrained weights.

    ``pretrained=True`` loads timm's ImageNet weights (the rw CoAtNets, e.g.
    ``coatnet_0_rw``), downloaded with the optional extra ``pip install
    'coatlib[pretrained]'``; offline it fails at once. ``checkpoint_path`` loads a
    local file instead: a coatlib state dict, ``fit``'s ``checkpoint.pt``, a ``{'model': ...}`` or
    ``{'state_dict': ...}`` wrapper, or timm's ``model.safetensors`` (``weights.load_checkpoint``).
    Both go through :mod:`coatlib.weights`; timm's tables made for another image size are resized. A file
    that does not fit the model built here raises a ``ValueError`` listing the differences by stage, with
    the likely fix (``num_classes=``, ``layout=``, ``image_size=``).
    """
    _load_families()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} coatlib.list_models() lists all {len(_REGISTRY)} models.")
    if pretrained or checkpoint_path is not None:
        from coatlib import weights

        if pretrained and checkpoint_path is not None:
            raise ValueError("pass pretrained=True (download) or checkpoint_path=... (a local file), not both")
        state_dict = weights.pretrained_state_dict(name) if pretrained else None
        if num_classes is None and name in weights.PRETRAINED:
            num_classes = weights.PRETRAINED[name].num_classes
        model = create_model(name, num_classes, image_size, in_chans, **overrides)
        if state_dict is None:
            return weights.load_checkpoint(model, checkpoint_path)
        return weights.load_timm_weights(model, state_dict)
    if num_classes is None:
        num_classes = 1000
    builder = _REGISTRY[name]
    try:
        return builder(num_classes=num_classes, image_size=image_size, in_chans=in_chans, **overrides)
    except TypeError as e:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if bad is None:
            raise
        valid = ["num_classes", "image_size", "in_chans", "pretrained", "checkpoint_path", *_keywords(builder)]
        close = difflib.get_close_matches(bad[1], valid, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise TypeError(
            f"create_model({name!r}) got an unknown keyword {bad[1]!r}.{hint} {name} takes: {', '.join(valid)}"
        ) from None


def _keywords(builder: Callable[..., nn.Module]) -> list[str]:
    """The keywords a builder passes on: the parameters of the class it returns (its return annotation)."""
    model_class = inspect.signature(builder, eval_str=True).return_annotation
    target = model_class.__init__ if isinstance(model_class, type) else builder
    skip = {"self", "config", "num_classes", "image_size", "in_chans"}
    return [p for p in inspect.signature(target).parameters if p not in skip and not p.startswith("_")]
