"""The registry of model names: every model family registers a builder per name with ``@register_model``.

This module knows no model: the families import it (``coatlib.models``), and ``coatlib.factory``
builds from it (``create_model(name, ...)``, ``list_models()``).
"""

from __future__ import annotations

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


def registered() -> dict[str, Callable[..., nn.Module]]:
    """``{name: builder}`` of every model registered so far (a copy)."""
    return dict(_REGISTRY)
