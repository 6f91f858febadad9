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
import torch.nn.functional as F

Layer = Callable[..., nn.Module]


def pair(x: int | tuple[int, int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; tuples pass through."""
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample.

    During training each sample's branch is zeroed with probability ``p`` and
    the survivors are scaled by ``1/(1-p)``; in eval mode it is the identity.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

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


class InferenceCache:
    """A tensor derived from parameters (a folded conv weight, an expanded bias table),
    computed once and reused while the parameters stay as they are.

    ``cache.get(sources, compute, *extra)`` returns ``compute()``. The result is kept
    and returned again as long as every source is the same tensor with the same
    storage, version, device and dtype (an optimizer step, ``load_state_dict`` or any
    other in-place update bumps the version) and ``extra`` is unchanged. Nothing is
    cached while a gradient flows to a source or ``torch.compile`` traces the model.
    Writes through ``tensor.data`` bypass the version counter: call ``clear()`` after those.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self._sources: list[torch.Tensor] = []
        self._key: tuple | None = None
        self._value = None

    def get(self, sources: list[torch.Tensor], compute: Callable[[], object], *extra):
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(s.requires_grad for s in sources)):
            return compute()
        key = tuple((s._version, s.data_ptr(), s.device, s.dtype) for s in sources) + extra
        same = len(sources) == len(self._sources) and all(a is b for a, b in zip(sources, self._sources))
        if not (same and key == self._key):
            with torch.inference_mode(False), torch.no_grad():  # usable outside inference mode too
                self._value = compute()
            self._sources, self._key = list(sources), key
        return self._value


BatchNorms = (nn.BatchNorm2d, nn.SyncBatchNorm)


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm with running statistics is the per-channel affine map ``y = s * x + t`` with
    ``s = gamma / sqrt(var + eps)`` and ``t = beta - s * mean`` (Ioffe & Szegedy 2015, Alg. 2)."""
    s = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        s = s * bn.weight
    t = -s * bn.running_mean
    return s, t if bn.bias is None else t + bn.bias


def fold_batchnorm(
    conv: nn.Conv2d, after: nn.Module | None = None, before: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a single conv equal to ``after(conv(before(x)))`` for BatchNorms in eval mode.

    A BatchNorm after the conv scales its output channels: ``W' = s_out W``,
    ``b' = s_out b + t_out``. A BatchNorm before a 1x1 conv scales its input
    channels: ``W' = W s_in``, ``b' = b + W t_in`` (with a k x k conv the zero
    padding would see ``t_in`` at the border, so only 1x1 convs fold it).
    """
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
    return weight, bias


def can_fold(bn: nn.Module | None) -> bool:
    """A BatchNorm that normalises with running statistics (eval mode) is a fixed affine map."""
    return isinstance(bn, BatchNorms) and not bn.training and bn.running_mean is not None


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation``, the unit of every convolutional network.

    ``groups=in_chs`` (with ``in_chs == out_chs``) makes it a depthwise conv.
    Pass ``norm_layer=None`` or ``act_layer=None`` to leave either out.

    Inference fast path: in eval mode a BatchNorm is a fixed affine map, so it is
    folded into the conv's weight and bias (``fold_batchnorm``), computed once and
    cached until a weight changes. The result equals the plain path to float
    rounding; set ``fold_bn = False`` on a module to run conv and BatchNorm apart.
    """

    fold_bn = True

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
        self._folded = InferenceCache()

    def forward(self, x: torch.Tensor, norm_before: nn.Module | None = None) -> torch.Tensor:
        """``act(norm(conv(norm_before(x))))``; ``norm_before`` is a pre-activation BatchNorm
        (CoAtNet's MBConv), folded into the conv too when the conv is 1x1."""
        conv, layers = self[0], list(self)[1:]
        if norm_before is not None and not (
            self.fold_bn and can_fold(norm_before) and conv.kernel_size == (1, 1) and conv.groups == 1
        ):
            x, norm_before = norm_before(x), None  # applied on its own
        after = layers.pop(0) if self.fold_bn and layers and can_fold(layers[0]) else None
        if after is None and norm_before is None:
            return super().forward(x)
        sources = [t for m in (conv, after, norm_before) if m is not None for t in (*m.parameters(), *m.buffers())]
        weight, bias = self._folded.get(sources, lambda: fold_batchnorm(conv, after, norm_before))
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        for layer in layers:
            x = layer(x)
        return x


def fold_batchnorms(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the eval-mode BatchNorm folding of every ``ConvNormAct`` in ``model`` on or off
    (off: conv and BatchNorm run one after the other, as written)."""
    for m in model.modules():
        if isinstance(m, ConvNormAct):
            m.fold_bn = enabled
    return model


class GELU(nn.GELU):
    """``nn.GELU`` (exact, erf form) that, like ``ReLU(inplace=True)``, overwrites its input
    when no gradient is recorded through it: inference then allocates no new feature map
    for the activation. Use it only on a tensor nothing else reads (the fresh output of
    a conv or linear layer), as every block here does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018), as used by EfficientNet and CoAtNet.

    ``s = gate(fc2(act(fc1(mean_hw(x)))))`` and the output is ``x * s``: a
    per-channel weight computed from the whole image.
    """

    def __init__(
        self, channels: int, rd_channels: int, act_layer: Layer = GELU, gate_layer: Layer = nn.Sigmoid
    ):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2) with squeeze-excitation (EfficientNet).

    ``expand`` (1x1 conv to ``mid_chs``) -> ``dw`` (k x k depthwise conv) ->
    ``se`` -> ``project`` (1x1 conv back to ``out_chs``).

    Two residual forms:

    * ``pre_norm=True``, CoAtNet (appendix A.1, Eq. 5):
      ``x <- Proj(Pool(x)) + Project(SE(DW(Expand(BN(x)))))``; the project conv
      has a bias and no norm, and the shortcut is pooled and projected when the
      shape changes.
    * ``pre_norm=False``, MobileNetV2 / EfficientNet: BatchNorm after every conv,
      an identity shortcut only when the shape is unchanged.

    ``stride_on`` chooses where a stride-2 block down-samples: ``"expand"`` (the
    first 1x1 conv, the CoAtNet paper's Eq. 5) or ``"dw"`` (the depthwise conv,
    the paper's Table 9 alternative and the MobileNet/EfficientNet choice).

    ``se_gate_layer`` is the squeeze-excitation gate (sigmoid; MobileNetV3 uses
    hard-sigmoid). ``fused=True`` makes it the Fused-MBConv of EfficientNetV2
    (Tan & Le 2021, Fig. 2): the expand 1x1 conv and the depthwise conv become
    one full ``k x k`` conv (``expand``, carrying the stride; ``dw`` is left
    out). With expansion ratio 1 (``mid_chs == in_chs``) the ``k x k`` conv maps
    straight to ``out_chs`` with its activation and there is no ``project``.

    In eval mode the pre-norm BatchNorm folds into the expand 1x1 conv together
    with the BatchNorm after it (see ``ConvNormAct``), so the block runs no
    BatchNorm at all.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        stride: int = 1,
        kernel_size: int = 3,
        se_chs: int = 0,
        act_layer: Layer = GELU,
        se_act_layer: Layer | None = None,
        norm_layer: Layer = nn.BatchNorm2d,
        pre_norm: bool = True,
        stride_on: str = "expand",
        pool: str = "max",
        drop_path: float = 0.0,
        se_gate_layer: Layer = nn.Sigmoid,
        fused: bool = False,
    ):
        super().__init__()
        if stride_on not in ("expand", "dw"):
            raise ValueError(f"stride_on must be 'expand' or 'dw', got {stride_on!r}")
        s_expand, s_dw = (stride, 1) if stride_on == "expand" else (1, stride)
        post_norm = None if pre_norm else norm_layer
        self.pre_norm = pre_norm
        self.norm = norm_layer(in_chs) if pre_norm else nn.Identity()
        if fused:  # Fused-MBConv: one full k x k conv replaces expand 1x1 + depthwise k x k
            fused_out = out_chs if mid_chs == in_chs else mid_chs  # ratio 1: straight to out_chs
            self.expand = ConvNormAct(in_chs, fused_out, kernel_size, stride, norm_layer=norm_layer, act_layer=act_layer)
            self.dw = nn.Identity()
        else:
            if mid_chs != in_chs:
                self.expand = ConvNormAct(in_chs, mid_chs, 1, s_expand, norm_layer=norm_layer, act_layer=act_layer)
            else:  # expansion ratio 1 (first EfficientNet stage): no expand conv
                if s_expand != 1:
                    raise ValueError("a block without an expand conv must put its stride on the depthwise conv")
                self.expand = nn.Identity()
            self.dw = ConvNormAct(mid_chs, mid_chs, kernel_size, s_dw, groups=mid_chs, norm_layer=norm_layer, act_layer=act_layer)
        self.se = (
            SqueezeExcite(mid_chs, se_chs, se_act_layer or act_layer, se_gate_layer) if se_chs > 0 else nn.Identity()
        )
        if fused and mid_chs == in_chs:
            self.project = nn.Identity()
        else:
            self.project = ConvNormAct(mid_chs, out_chs, 1, norm_layer=post_norm, act_layer=None)
        self.drop_path = DropPath(drop_path)

        self.has_shortcut = pre_norm or (stride == 1 and in_chs == out_chs)
        self.shortcut = nn.Identity()
        if pre_norm and (stride != 1 or in_chs != out_chs):
            self.shortcut = Downsample(in_chs, out_chs, stride, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.expand, ConvNormAct):  # BN(x) -> 1x1 conv: one conv in eval mode
            h = self.expand(x, norm_before=self.norm)
        else:
            h = self.expand(self.norm(x))
        y = self.project(self.se(self.dw(h)))
        if not self.has_shortcut:
            return y
        y = self.drop_path(y)
        return y.add_(self.shortcut(x))  # in place: y is this block's own fresh tensor


class Downsample(nn.Sequential):
    """The shortcut of a down-sampling block: ``Proj(Pool(x))`` (CoAtNet appendix A.1).

    ``Pool`` is a 2x2 stride-2 pooling (max in the paper), ``Proj`` a 1x1 conv
    with bias. Either is left out when it is not needed.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2, pool: str = "max"):
        layers: list[nn.Module] = []
        if stride != 1:
            layers.append(make_pool(pool, stride))
        if in_chs != out_chs:
            layers.append(nn.Conv2d(in_chs, out_chs, 1))
        super().__init__(*layers)


def make_pool(kind: str, stride: int = 2) -> nn.Module:
    """``stride x stride`` max or average pooling with no padding."""
    if kind == "max":
        return nn.MaxPool2d(stride, stride)
    if kind == "avg":
        return nn.AvgPool2d(stride, stride)
    raise ValueError(f"pool must be 'max' or 'avg', got {kind!r}")


class Mlp(nn.Module):
    """The Transformer feed-forward network: ``fc2(act(fc1(x)))``, hidden width ``ratio * dim``."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, act_layer: Layer = GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ConvStem(nn.Sequential):
    """CoAtNet's stage S0: conv3x3 stride 2 -> BN -> GELU -> conv3x3 (section 3.3).

    The second conv has no norm and no bias: the first S1 block normalises its
    input (pre-activation).
    """

    def __init__(self, in_chs: int, out_chs: int, act_layer: Layer = GELU):
        super().__init__(
            ConvNormAct(in_chs, out_chs, 3, 2, act_layer=act_layer),
            nn.Conv2d(out_chs, out_chs, 3, 1, padding=1, bias=False),
        )


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


def check_image_size(image_size: int | tuple[int, int], min_size: int = 32, multiple: int = 1) -> tuple[int, int]:
    """``(H, W)``, or a ``ValueError`` unless both are ``>= min_size`` and multiples of ``multiple``."""
    H, W = pair(image_size)
    if H < min_size or W < min_size or H % multiple or W % multiple:
        rule = f">= {min_size}" + (f" and multiples of {multiple}" if multiple > 1 else "")
        raise ValueError(f"image size {H}x{W} is not supported: height and width must be {rule} (e.g. 224)")
    return H, W


def check_images(x: torch.Tensor, in_chans: int, min_size: int = 32, multiple: int = 1) -> None:
    """The input check of the zoo's models: a ``ValueError`` unless ``x`` is a batch
    ``(B, in_chans, H, W)`` whose size passes ``check_image_size``."""
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
    ``endpoint=False`` gives ``rate * i / n`` (the EfficientNet reference code)."""
    steps = max(n_blocks - 1, 1) if endpoint else n_blocks
    return [rate * i / steps for i in range(n_blocks)]
