"""What a result file records of the machine that made it."""

from __future__ import annotations

import importlib
import platform

import torch


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that decide a run's numbers, and the device, for result files."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "numpy", "sklearn", "skimage", "coatlib"):
        out[name] = importlib.import_module(name).__version__
    cpu = f"cpu, {torch.get_num_threads()} threads"
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu
    return out
