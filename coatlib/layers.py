"""Convolutional building blocks shared by every model family.

The blocks here are the vocabulary of the book: a depthwise convolution (the
paper's Eq. 1), squeeze-excitation, the inverted bottleneck MBConv, the
feed-forward network of a Transformer, the two-conv stem S0 and stochastic
depth. CoAtNet uses them in their pre-activation form; the zoo (MobileNet,
EfficientNet, ...) uses the same modules in post-activation form.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

Layer = Callable[..., nn.Module]


def pair(x: int | tuple[int, int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; tuples pass through."""
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def check_drop_path_rate(rate: float) -> float:
    """``rate`` if it is a probability of dropping a branch that leaves some to train: in [0, 1)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(
            f"drop_path_rate must be in [0, 1) (the probability of dropping a residual branch, e.g. 0.1; "
            f"1 would drop every one), got {rate!r}"
        )
    return rate


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample.

    During training each sample's branch is zeroed with probability ``p`` and
    the survivors are scaled by ``1/(1-p)``; in eval mode it is the identity.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = check_drop_path_rate(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DepthwiseConv(nn.Conv2d):
    """Depthwise convolution, the paper's Eq. 1: ``y_i = sum_{j in L(i)} w_{i-j} * x_j``.

    One ``k x k`` kernel per channel (``groups = channels``): each output channel
    is a weighted sum over the local neighbourhood of the same input channel.
    """

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = False):
        super().__init__(channels, channels, kernel_size, stride, padding=kernel_size // 2, groups=channels, bias=bias)


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation``, the unit of every convolutional network.

    ``groups=in_chs`` (with ``in_chs == out_chs``) makes it a depthwise conv.
    Pass ``norm_layer=None`` or ``act_layer=None`` to leave either out; the conv
    has a bias only when there is no norm after it. At inference the BatchNorm
    can be folded into the conv by :func:`coatlib.fuse`.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Layer | None = nn.BatchNorm2d,
        act_layer: Layer | None = nn.ReLU,
        bias: bool | None = None,
    ):
        bias = norm_layer is None if bias is None else bias
        layers: list[nn.Module] = [
            nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_chs))
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018), as used by EfficientNet and CoAtNet.

    ``s = gate(fc2(act(fc1(mean_hw(x)))))`` and the output is ``x * s``: a
    per-channel weight computed from the whole image.
    """

    def __init__(self, channels: int, rd_channels: int, act_layer: Layer = nn.GELU, gate_layer: Layer = nn.Sigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class Downsample(nn.Module):
    """The shortcut of a down-sampling block: ``Proj(Pool(x))`` (CoAtNet appendix A.1).

    ``pool`` is a 2x2 stride-2 pooling (max in the paper, average in timm), ``proj`` a
    1x1 conv (with a bias unless ``bias=False``); either is an identity when it is not
    needed. Older coatlib state dicts, saved when this was an ``nn.Sequential`` (the conv at
    ``shortcut.0``, or ``shortcut.1`` after a pool), still load: their keys are renamed to ``shortcut.proj``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2, pool: str = "max", bias: bool = True):
        super().__init__()
        self.pool = make_pool(pool, stride) if stride != 1 else nn.Identity()
        self.proj = conv1x1(in_chs, out_chs, bias=bias) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in [k for k in state_dict if k.startswith((f"{prefix}0.", f"{prefix}1."))]:
            state_dict[f"{prefix}proj.{key[len(prefix) + 2 :]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LayerScale2d(nn.Module):
    """A learned scale per channel of a map ``(B, C, H, W)``, ``x * gamma`` (Touvron et al. 2021,
    CaiT), starting at ``init``: a residual branch starts almost switched off."""

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def conv1x1(in_chs: int, out_chs: int, bias: bool = True) -> nn.Conv2d:
    """A 1x1 convolution: the same linear map ``W x + b`` applied to every pixel's channels."""
    return nn.Conv2d(in_chs, out_chs, 1, bias=bias)


def make_pool(kind: str, stride: int = 2) -> nn.Module:
    """``stride x stride`` max or average pooling with no padding."""
    if kind == "max":
        return nn.MaxPool2d(stride, stride)
    if kind == "avg":
        return nn.AvgPool2d(stride, stride)
    raise ValueError(f"pool must be 'max' or 'avg', got {kind!r}")


class Mlp(nn.Module):
    """The Transformer feed-forward network: ``fc2(act(fc1(x)))``, hidden width ``hidden``.

    Tokens come in as ``(..., dim)``; with ``channels_first=True`` a map ``(B, dim, H, W)``,
    and the same two linear layers act on every position's channels.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        out_dim: int | None = None,
        act_layer: Layer = nn.GELU,
        drop: float = 0.0,
        channels_first: bool = False,
    ):
        super().__init__()
        self.channels_first = channels_first
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:  # (B, C, H, W) -> (B, H, W, C): a view for channels-last memory
            return self.forward_tokens(x.movedim(1, -1)).movedim(-1, 1)
        return self.forward_tokens(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10% down.

    The rounding rule of the MobileNet and EfficientNet reference code, used
    when a width multiplier scales the channels of a config table.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map ``(B, C, H, W)`` (ConvNeXt's stem and down-sampling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def nearest_multiples(size: int, multiple: int) -> str:
    """The valid sizes around ``size``: ``nearest_multiples(230, 32) == "224 or 256"``."""
    below = max(size // multiple, 1) * multiple
    return f"{below} or {below + multiple}" if below != size else str(size)


def check_image_size(image_size: int | tuple[int, int], min_size: int = 32, multiple: int = 1) -> tuple[int, int]:
    """``(H, W)``, or a ``ValueError`` unless both are ``>= min_size`` and multiples of ``multiple``.

    The message names the nearest valid sizes: ``230 -> 224 or 256`` for ``multiple=32``."""
    H, W = pair(image_size)
    if H < min_size or W < min_size or H % multiple or W % multiple:
        rule = f">= {min_size}" + (f" and multiples of {multiple}" if multiple > 1 else "")
        fix = [f"{n} {nearest_multiples(max(v, min_size), multiple)}" for n, v in (("height", H), ("width", W))]
        raise ValueError(
            f"image size {H}x{W} is not supported: height and width must be {rule}; nearest valid: "
            f"{', '.join(fix)} (e.g. 224 for both)"
        )
    return H, W


def check_images(
    x: torch.Tensor, in_chans: int, min_size: int = 32, multiple: int = 1, dtype: torch.dtype | None = None
) -> None:
    """The input check of every model: a ``ValueError`` (or ``TypeError``) unless ``x`` is a floating
    point batch ``(B, in_chans, H, W)`` whose size passes ``check_image_size`` and, when ``dtype`` (the
    model's weights' type) is given, of that type. Under ``torch.autocast`` any floating type passes:
    autocast casts it. The input is never cast silently: a float64 or bfloat16 batch into a float32 model
    is an error that says how to convert."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images (batch, {in_chans}, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"got a {x.dtype} tensor: models take normalised floating-point images. Convert and normalise "
            f"first, e.g. x = (x.float() / 255 - mean) / std with the data set's per-channel mean and std"
        )
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"got {x.dtype} images but the model's weights are {dtype}: convert the images with x.to({dtype}), "
            f"or the model with model.to({x.dtype}), or compute in lower precision under torch.autocast"
        )
    if x.ndim == 3 and x.shape[0] == in_chans:
        raise ValueError(
            f"expected a batch of images (batch, {in_chans}, H, W) but got one image of shape {tuple(x.shape)}: "
            f"add the batch dimension with x.unsqueeze(0)"
        )
    if x.ndim == 4 and x.shape[-1] == in_chans and x.shape[1] != in_chans:
        raise ValueError(
            f"expected images of shape (batch, {in_chans}, H, W) but got {tuple(x.shape)}, channels last "
            f"(batch, H, W, {in_chans}): permute them to (B, C, H, W) with x.permute(0, 3, 1, 2)"
        )
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"expected images of shape (batch, {in_chans}, H, W) but got {tuple(x.shape)}: convert the images, "
            f"or build the model with in_chans={x.shape[1] if x.ndim == 4 else '...'}"
        )
    check_image_size(tuple(x.shape[-2:]), min_size, multiple)


def init_weights(model: nn.Module) -> None:
    """The zoo's initialisation: He normal (fan-out) for convs, truncated normal (std 0.02)
    for linear layers, zero biases; norms keep PyTorch's ones and zeros."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


def drop_path_rates(rate: float, n_blocks: int, endpoint: bool = True) -> list[float]:
    """Stochastic depth growing linearly with depth (Huang et al. 2016): block ``i`` of ``n`` drops
    its branch with ``rate * i / (n - 1)``, reaching ``rate`` at the last block (Swin, ConvNeXt, ViT);
    ``endpoint=False`` gives ``rate * i / n`` (the EfficientNet reference code). ``rate`` must be in [0, 1)."""
    check_drop_path_rate(rate)
    steps = max(n_blocks - 1, 1) if endpoint else n_blocks
    return [rate * i / steps for i in range(n_blocks)]
