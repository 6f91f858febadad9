"""Weights from files and from the Hugging Face Hub: reading, checking, renaming, downloading.

Everything here is about state dicts, not about any one model family, so every family can use it:

* ``read_checkpoint(path)`` reads a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``);
  ``unwrap_state_dict`` finds the state dict inside the wrappers training loops write.
* ``check_state_dict_fits(model, state_dict)`` refuses a state dict of another model, listing the
  differences by stage with the likely fix.
* ``load_renamed(model, state_dict, rename, convert, source)`` loads the weights of another library:
  each family says how its tensors are named there (``torchvision_mapping`` beside each zoo family,
  ``coatlib.models.coatnet_rw_timm.timm_mapping`` for timm's CoAtNets), this function checks and loads.
* ``download_from_hub(hub_id, ...)`` fetches a ``model.safetensors`` with the optional ``pretrained``
  extra, failing at once, in one line, when that is impossible (offline, say).
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

INSTALL_HINT = "pip install 'coatlib[pretrained]'"
# Buffers torchvision stores that coatlib recomputes from the window size.
DERIVED = ("relative_position_index",)
# Prefixes the wrappers of a training loop add to every key: DDP's ``module.``, torch.compile's ``_orig_mod.``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Renaming rules, applied in order: ``(regular expression, replacement)`` as ``re.sub`` takes them.
Rules = list[tuple[str, str | Callable[[re.Match], str]]]
Rename = Callable[[str], str]
Convert = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


def renamer(rules: Rules) -> Rename:
    """The function that renames a key by applying ``rules`` one after the other."""

    def rename(key: str) -> str:
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        return key

    return rename


def as_is(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The ``convert`` of a library that stores every tensor in coatlib's layout."""
    return value


def _torchvision_stage(m: re.Match) -> str:
    """Swin and ConvNeXt: torchvision's flat ``features.k`` alternates a stage's blocks (odd k)
    and the down-sampling before the next stage (even k); coatlib groups both in ``stages.i``."""
    k = int(m[1])
    return f"stages.{k // 2}.blocks." if k % 2 else f"stages.{k // 2}.downsample."


TORCHVISION_STAGES = (r"^features\.(\d+)\.", _torchvision_stage)


# --- reading -------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``torch.save`` file read with
    ``weights_only=True`` (tensors and containers only: no code runs)."""
    if Path(path).is_dir():
        raise ValueError(
            f"{path} is a folder, the checkpoint of a sharded run (fit(fsdp=True)): load it with "
            f"coatlib.train.load_training_checkpoint({str(path)!r}, model)"
        )
    if str(path).endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"reading a .safetensors file needs safetensors: {INSTALL_HINT}") from None
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def as_state_dict(state_dict: Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike) -> Mapping:
    """A state dict given as itself, as the model that holds it, or as the path of a file."""
    if isinstance(state_dict, (str, os.PathLike)):
        return read_checkpoint(state_dict)
    if isinstance(state_dict, nn.Module):
        return state_dict.state_dict()
    return state_dict


def unwrap_state_dict(checkpoint: Mapping, path: str | os.PathLike = "the checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside ``checkpoint``: itself, or its ``"model"`` entry (``fit``'s ``checkpoint.pt``,
    and the common ``{'model': ...}`` wrapper) or ``"state_dict"`` entry; the prefixes of DDP
    (``module.``) and ``torch.compile`` (``_orig_mod.``) removed."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        entries = list(checkpoint)[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} holds no state dict (tensors by name) where one is looked for: itself, its 'model' or its "
            f"'state_dict' entry; it holds {entries}. Save the weights with torch.save(model.state_dict(), path)"
        )
    state_dict = dict(checkpoint)
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    return state_dict


# --- checking --------------------------------------------------------------------------------------


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source="the state dict") -> None:
    """Raise a ``ValueError`` unless ``state_dict`` has exactly ``model``'s tensors and shapes, listing the
    missing, unexpected and wrong-shape tensors by stage (``S3`` for ``stages.2``) with the likely fix."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    wrong = [k for k in target if k in state_dict and state_dict[k].shape != target[k].shape]
    if not (missing or unexpected or wrong):
        return
    groups: dict[str, list[str]] = {}
    for kind, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
        for group in dict.fromkeys(map(_stage_of, keys)):
            inside = [k for k in keys if _stage_of(k) == group]
            shown = [_shapes(k, state_dict, target) if kind == "of another shape" else k for k in inside[:2]]
            more = f", ... {len(inside) - 2} more" if len(inside) > 2 else ""
            groups.setdefault(group, []).append(f"{len(inside)} {kind} ({'; '.join(shown)}{more})")
    report = "\n".join(f"  {group}: {', '.join(parts)}" for group, parts in groups.items())
    raise ValueError(
        f"{source} does not fit this {type(model).__name__} ({len(missing)} tensors missing, {len(unexpected)} "
        f"unexpected, {len(wrong)} of another shape):\n{report}\n{_fix_hint(model, state_dict, target, wrong)}"
    )


def _stage_of(key: str) -> str:
    """``"S3"`` for a key under ``stages.2``; the first part of the name (``stem``, ``head``, ...) otherwise."""
    found = re.match(r"stages\.(\d+)\.", key)
    return f"S{int(found[1]) + 1}" if found else key.split(".")[0]


def _shapes(key: str, state_dict: Mapping, target: Mapping) -> str:
    return f"{key}: {tuple(state_dict[key].shape)} in the file, {tuple(target[key].shape)} in the model"


def _fix_hint(model: nn.Module, state_dict: Mapping, target: Mapping, wrong: list[str]) -> str:
    """The likely fix: another number of classes, another CoAtNet layout, another image size, or another model."""
    shared = set(state_dict) & set(target)
    if len(shared) < len(target) / 2:
        return (
            f"Hint: the file shares only {len(shared)} of its {len(state_dict)} tensor names with this model: the "
            f"weights are of another architecture; build the model they come from"
        )
    classifier = next(reversed([k for k in target if k.endswith(".weight") and target[k].ndim == 2]), None)
    hints = []
    if classifier in wrong and state_dict[classifier].shape[1:] == target[classifier].shape[1:]:
        hints.append(f"num_classes={state_dict[classifier].shape[0]} (the file's classifier has that many outputs)")
    # a CoAtNet of four stages (not ViT-Rel's single one): the models with a layout
    if isinstance(getattr(model, "layout", None), str) and len(model.stages) == 4:
        layout = _layout_of(state_dict, len(model.stages))
        if layout != model.layout:
            hints.append(f"layout={layout!r} (the file's stages; this model is {model.layout!r})")
        sizes = {_image_size_of(k, state_dict[k]) for k in wrong if k.endswith("relative_bias_table")}
        if len(sizes) == 1:
            hints.append(f"image_size={sizes.pop()} (the size its bias tables were made for)")
    if any(k.endswith(("relative_bias_table", "pos_embed")) for k in wrong) and not hints:
        hints.append("image_size= the size the weights were trained at (their position tables differ)")
    if not hints:
        return "Hint: build the model with the options the weights were trained with (width, depth, head)"
    return "Hint: build the model with " + " and ".join(hints)


def _layout_of(state_dict: Mapping, stages: int) -> str:
    """The CoAtNet layout of a state dict: ``T`` for a stage with attention tensors, ``C`` otherwise."""
    return "-".join(
        "T" if any(k.startswith(f"stages.{i}.") and ".attn." in k for k in state_dict) else "C" for i in range(stages)
    )


def _image_size_of(key: str, table: torch.Tensor) -> int:
    """The image size a CoAtNet bias table ``(heads, 2H-1, 2W-1)`` of ``stages.i`` was made for: the stem
    and every stage halve the map, so stage ``S{i+1}``'s map is the image over ``2 ** (i + 2)``."""
    stage = int(re.match(r"stages\.(\d+)\.", key)[1])
    return (table.shape[-2] + 1) // 2 * 2 ** (stage + 2)


# --- loading another library's weights ---------------------------------------------------------------


def _fits(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    """Same shape, or a table that the model resizes when it loads it (made for another
    window or image size): Swin's bias table with the same heads, ViT's position
    embedding with the same width."""
    if value.shape == target.shape:
        return True
    if key.endswith("relative_bias_table"):  # (heads, 2w-1, 2w-1)
        return value.ndim == 3 and value.shape[0] == target.shape[0]
    if key.endswith("pos_embed"):  # (1, 1 + patches, D)
        return value.ndim == 3 and value.shape[-1] == target.shape[-1]
    return False


def load_renamed(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], rename: Rename, convert: Convert, source: str
) -> nn.Module:
    """Rename and convert every tensor of ``state_dict`` (another library's, ``source``), check that each
    fits ``model``, load them; returns ``model``."""
    name = type(model).__name__
    target = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(DERIVED):
            continue
        new_key = rename(key)
        if new_key not in target:
            raise ValueError(
                f"{source} key {key!r} does not fit this {name}: it would go to {new_key!r}, which the model "
                f"does not have. The weights come from a different architecture (another depth or family); "
                f"build the coatlib model that matches them"
            )
        value = convert(new_key, value, target[new_key])
        if not _fits(new_key, value, target[new_key]):
            raise ValueError(
                f"{source} key {key!r} does not fit this {name}: shape {tuple(value.shape)} but {new_key!r} "
                f"has shape {tuple(target[new_key].shape)}. The weights come from a different architecture "
                f"(another width or depth) or another number of classes: build the coatlib model that matches "
                f"them (to fine-tune on other classes, load into the 1000-class model, then replace its classifier)"
            )
        converted[new_key] = value
    missing = [k for k in target if k not in converted]
    if missing:
        raise ValueError(
            f"the state dict does not fit this {name}: it has nothing for {missing[0]!r} ({len(missing)} model "
            f"tensors missing in all). The weights come from a smaller architecture; build the coatlib model "
            f"that matches them"
        )
    model.load_state_dict(converted)
    return model


# --- downloading -------------------------------------------------------------------------------------


def download_from_hub(hub_id: str, what: str, local: str) -> dict[str, torch.Tensor]:
    """The tensors of ``hub_id``'s ``model.safetensors`` on the Hugging Face Hub (cached by
    ``huggingface_hub``), read with ``safetensors``: the ``pretrained`` extra.

    Fails at once, with a one-line message saying what to do, when the extra is not installed
    (``ImportError``) or the download is impossible, e.g. offline (``ConnectionError``); ``what`` names
    the caller (``"pretrained=True"``), ``local`` says how to do without the download.
    """
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        from safetensors.torch import load_file  # noqa: F401 (read_checkpoint needs it)
    except ImportError:
        raise ImportError(
            f"{what} downloads the weights with huggingface_hub and safetensors, which are not "
            f"installed: {INSTALL_HINT} (and be online), or {local}"
        ) from None
    offline = ConnectionError(
        f"{what} needs the network ({INSTALL_HINT} is there) and could not download {hub_id} from the "
        f"Hugging Face Hub: connect and retry, or {local}"
    )
    try:  # a copy downloaded before, in huggingface_hub's cache
        return read_checkpoint(hf_hub_download(hub_id, "model.safetensors", local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if constants.is_offline_mode() or not hub_reachable(constants.ENDPOINT):
        raise offline  # at once: huggingface_hub itself would retry for half a minute
    try:
        return read_checkpoint(hf_hub_download(hub_id, "model.safetensors"))
    except (OSError, HfHubHTTPError):
        raise offline from None


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host (``https://huggingface.co``) opens within ``timeout`` s."""
    url = urllib.parse.urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True
