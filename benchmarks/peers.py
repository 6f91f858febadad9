"""Import the reference libraries (torchvision, timm) for tests and benchmarks.

On a CPU-only torch the registry's torchvision wheel (a CUDA build) fails to
import in ``torchvision._meta_registrations``, which registers fake kernels for
C++ ops that are absent. Model definitions do not need those ops: after a
normal import fails, an empty stand-in module for it makes the import work.
Use only in tests and benchmarks.
"""

from __future__ import annotations

import importlib
import sys
import types


def import_peer(name: str):
    """``import_peer("torchvision")`` / ``import_peer("timm")``: the module, or ``None`` when absent."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
    except Exception:  # the CUDA torchvision wheel on a CPU-only torch
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        try:
            return importlib.import_module(name)
        except Exception:
            return None
