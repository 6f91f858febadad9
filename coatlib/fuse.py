"""Inference preparation: ``coatlib.fuse(model)`` returns a faster copy for inference only.

The model code reads as the papers' equations and holds no hidden state: a
BatchNorm runs as a BatchNorm and a relative-bias table is expanded on every
call. At inference those are fixed maps, and one explicit step folds them away:

* **BatchNorm folding.** With running statistics a BatchNorm is the per-channel
  affine map ``y = s * x + t``. After a conv it merges into the conv's weight and
  bias (every ``Conv2d`` followed by a ``BatchNorm2d`` in an ``nn.Sequential``,
  e.g. ``ConvNormAct``); CoAtNet's pre-activation BatchNorm merges into the 1x1
  conv of :class:`~coatlib.blocks.MBConv` that follows it. CoAtNet-0 runs none
  of its BatchNorms afterwards.
* **Materialised bias tables.** Each relative attention (any ``RelativeAttention``: the
  paper's, timm's rw and Swin's windows) stores its expanded bias ``(heads, N, N)`` once
  instead of gathering it from the table on every call (its ``materialise_bias()``).
* **In-place GELU.** Every ``nn.GELU`` overwrites its input instead of allocating a new
  map (on a CPU a fresh large buffer costs more than the GELU itself: 3x on CoAtNet-0's
  S1 maps). Safe because in every coatlib model a GELU's input is a fresh tensor that
  nothing else reads (the output of a conv, a BatchNorm or a linear layer); a hook on a
  fused model's GELU would see its input overwritten.

The result is a copy (the model passed in is untouched), in eval mode, without
gradients; its ``train()`` raises, because a folded BatchNorm can no longer
learn or update its statistics: train the original model and call ``fuse`` again.
For training speed use ``torch.compile(model)`` instead: it keeps the real
computation and fuses kernels by itself.
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention
from coatlib.blocks import MBConv
from coatlib.models.coatnet_rw import RwMBConv


def fuse(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference: BatchNorms folded into convolutions, relative-bias
    tables expanded once, GELU in place. Equal to ``model.eval()`` to float rounding;
    ``.train()`` raises."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        if isinstance(module, (MBConv, RwMBConv)):
            _fold_pre_norm(module)
        if isinstance(module, RwMBConv):
            _fold_depthwise_norm(module)
        if isinstance(module, nn.Sequential):
            _fold_conv_bn_pairs(module)
        if isinstance(module, RelativeAttention):  # CoAtNet's, timm's rw and Swin's window attention
            module.materialise_bias()
        for name, child in module.named_children():
            if type(child) is nn.GELU:
                setattr(module, name, InplaceGELU(child.approximate))
    fused.requires_grad_(False)
    fused.train = types.MethodType(_refuse_training, fused)
    return fused


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm with running statistics is the per-channel affine map ``y = s * x + t`` with
    ``s = gamma / sqrt(var + eps)`` and ``t = beta - s * mean`` (Ioffe & Szegedy 2015, Alg. 2)."""
    s = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        s = s * bn.weight
    t = -s * bn.running_mean
    return s, t if bn.bias is None else t + bn.bias


def fold_batchnorm(
    conv: nn.Conv2d, after: nn.BatchNorm2d | None = None, before: nn.BatchNorm2d | None = None
) -> nn.Conv2d:
    """One conv equal to ``after(conv(before(x)))`` for BatchNorms with running statistics.

    A BatchNorm after the conv scales its output channels: ``W' = s_out W``,
    ``b' = s_out b + t_out``. A BatchNorm before a 1x1 conv scales its input
    channels: ``W' = W s_in``, ``b' = b + W t_in`` (with a k x k conv the zero
    padding would see ``t_in`` at the border, so only 1x1 convs take it).
    """
    if before is not None and (conv.kernel_size != (1, 1) or conv.groups != 1):
        raise ValueError("a BatchNorm before a conv folds only into a 1x1 conv with groups=1")
    with torch.no_grad():
        weight = conv.weight
        bias = conv.bias if conv.bias is not None else weight.new_zeros(weight.shape[0])
        if before is not None:
            s, t = batchnorm_affine(before)
            bias = bias + weight.flatten(1) @ t
            weight = weight * s[None, :, None, None]
        if after is not None:
            s, t = batchnorm_affine(after)
            weight = weight * s[:, None, None, None]
            bias = bias * s + t
        folded = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded.to(memory_format=_memory_format(conv.weight))


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        else (torch.contiguous_format)
    )


def _is_foldable(bn: nn.Module) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None


def _fold_pre_norm(block: MBConv | RwMBConv) -> None:
    """MBConv's ``BN(x) -> 1x1 conv``: the BatchNorm becomes part of the conv (not when an
    activation or a pool comes between them, as in some of timm's rw blocks)."""
    conv = block.expand[0]
    between = [getattr(block, name, nn.Identity()) for name in ("norm_act", "down")]  # rw only
    direct = all(isinstance(m, nn.Identity) for m in between)
    if _is_foldable(block.norm) and direct and conv.kernel_size == (1, 1) and conv.groups == 1:
        block.expand[0] = fold_batchnorm(conv, before=block.norm)
        block.norm = nn.Identity()


def _fold_depthwise_norm(block: RwMBConv) -> None:
    """timm's rw MBConv ``dw conv -> BN`` when its SE does not sit between them."""
    if not block.se_early and _is_foldable(block.dw_norm[0]):
        block.dw = fold_batchnorm(block.dw, after=block.dw_norm[0])
        block.dw_norm[0] = nn.Identity()


def _fold_conv_bn_pairs(seq: nn.Sequential) -> None:
    """Every ``Conv2d`` directly followed by a ``BatchNorm2d`` in ``seq``: conv folded, BatchNorm removed."""
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and _is_foldable(seq[i + 1]):
            seq[i] = fold_batchnorm(seq[i], after=seq[i + 1])
            seq[i + 1] = nn.Identity()


class InplaceGELU(nn.GELU):
    """``nn.GELU`` that writes its result into its input (made by :func:`fuse`, inference only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def _refuse_training(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError(
            "this model was prepared for inference by coatlib.fuse() (BatchNorms folded, bias tables "
            "expanded) and cannot train: train the original model (fuse returns a copy and leaves it as it "
            "was), or build a fresh one with coatlib.create_model(...) and load a state dict of the original"
        )
    return nn.Module.train(self, False)
