"""Build a registered model, with its weights if asked: ``create_model(name, ...)``, ``list_models()``.

Importing ``coatlib.models`` registers every family (``coatlib.registry``); a builder's options reach
the family's constructor. ``pretrained=True`` downloads timm's trained CoAtNets
(``coatlib.models.coatnet_rw_timm``), ``checkpoint_path=`` reads a local file (``load_weights_file``).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import re
from typing import Callable

import torch.nn as nn

import coatlib.models  # noqa: F401 (registers every family)
from coatlib.checkpoints import check_state_dict_fits, read_checkpoint, unwrap_state_dict
from coatlib.models import coatnet_rw_timm
from coatlib.models.coatnet import CoAtNet
from coatlib.models.coatnet_rw import RwCoAtNet
from coatlib.registry import registered


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob pattern."""
    names = sorted(registered())
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
    ``{'state_dict': ...}`` wrapper, or timm's ``model.safetensors`` (``load_weights_file``).
    timm's tables made for another image size are resized. A file that does not fit the model built here
    raises a ``ValueError`` listing the differences by stage, with the likely fix (``num_classes=``,
    ``layout=``, ``image_size=``).
    """
    builders = registered()
    if name not in builders:
        close = difflib.get_close_matches(name, builders, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} coatlib.list_models() lists all {len(builders)} models.")
    if pretrained or checkpoint_path is not None:
        if pretrained and checkpoint_path is not None:
            raise ValueError("pass pretrained=True (download) or checkpoint_path=... (a local file), not both")
        state_dict = coatnet_rw_timm.pretrained_state_dict(name) if pretrained else None
        if num_classes is None and name in coatnet_rw_timm.PRETRAINED:
            num_classes = coatnet_rw_timm.PRETRAINED[name].num_classes
        model = create_model(name, num_classes, image_size, in_chans, **overrides)
        if state_dict is None:
            return load_weights_file(model, checkpoint_path)
        return coatnet_rw_timm.load_timm_weights(model, state_dict)
    if num_classes is None:
        num_classes = 1000
    builder = builders[name]
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


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local file of weights into ``model``: a coatlib state dict (``torch.save(model.state_dict(), path)``),
    ``fit``'s ``checkpoint.pt``, a ``{'model': ...}`` or ``{'state_dict': ...}`` wrapper or, for a CoAtNet,
    timm's state dict (e.g. its ``model.safetensors``, recognised by timm's names), converted by
    ``load_timm_weights``. Anything else must fit ``model`` exactly; if it does not, the ``ValueError``
    lists the missing, unexpected and wrong-shape tensors by stage, with the likely fix
    (``num_classes=``, ``layout=``, ``image_size=``)."""
    state_dict = unwrap_state_dict(read_checkpoint(path), path)
    if isinstance(model, (CoAtNet, RwCoAtNet)) and coatnet_rw_timm.is_timm_state_dict(state_dict):
        return coatnet_rw_timm.load_timm_weights(model, state_dict)
    check_state_dict_fits(model, state_dict, path)
    model.load_state_dict(state_dict)
    return model
