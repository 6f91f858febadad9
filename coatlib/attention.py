"""Self-attention (the paper's Eq. 2) and relative attention (Eq. 3).

``MultiHeadAttention`` is plain multi-head self-attention over tokens with an
optional additive bias; ViT and Swin use it. ``RelativeAttention`` adds the
CoAtNet bias: one learnable scalar per head per 2-D offset ``i - j``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from coatlib.layers import pair


def num_heads_for(dim: int, head_dim: int) -> int:
    """Heads = width / head size; a clear error when the head size does not divide the width."""
    if dim % head_dim != 0:
        raise ValueError(
            f"attention head size {head_dim} does not divide the width {dim}: "
            f"choose a head size that divides {dim} (e.g. {_divisor_near(dim, head_dim)}) or a width that is a multiple of {head_dim}"
        )
    return dim // head_dim


def _divisor_near(n: int, d: int) -> int:
    return min((k for k in range(1, n + 1) if n % k == 0), key=lambda k: abs(k - d))


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention, Eq. 2: ``y_i = sum_j softmax_j(q_i . k_j / sqrt(d) + b_ij) v_j``.

    Tokens come in as ``(B, N, dim)`` and leave as ``(B, N, dim_out)``. ``bias``
    (broadcastable to ``(B, heads, N, N)``) is added to the logits before the
    softmax and goes to the fused ``scaled_dot_product_attention`` as its
    ``attn_mask``. Set ``fused = False`` to run the explicit
    matmul-softmax-matmul path instead (the two agree to float precision).
    """

    def __init__(self, dim: int, dim_out: int | None = None, head_dim: int = 32, qkv_bias: bool = True):
        super().__init__()
        dim_out = dim_out or dim
        self.num_heads = num_heads_for(dim_out, head_dim)
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.fused = True
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, N, dim) -> q, k, v``, each ``(B, heads, N, head_dim)``."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        return qkv.unbind(0)

    def logits(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``q k^T / sqrt(d) + bias``: the scores that the softmax turns into weights."""
        s = (q * self.scale) @ k.transpose(-2, -1)
        return s if bias is None else s + bias

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``softmax(q k^T / sqrt(d) + bias) v``, each head: ``(B, heads, N, head_dim)``."""
        if bias is not None:
            bias = bias.to(q.dtype)
            if bias.ndim == 3:  # (heads, N, N) -> (1, heads, N, N): the fused CPU kernel's fast path wants 4-D
                bias = bias.unsqueeze(0)
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.logits(q, k, bias).softmax(-1) @ v

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """``(B, heads, N, head_dim) -> (B, N, dim_out)``: concatenate the heads, then the output projection."""
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)  # (B, N, dim) -> 3 x (B, heads, N, head_dim)
        return self.merge_heads(self.attend(q, k, v, bias))  # (B, N, dim_out)


def relative_position_index(height: int, width: int) -> torch.Tensor:
    """``(N, N)`` index into a flattened ``(2H-1) x (2W-1)`` table, ``N = H*W``.

    Entry ``[i, j]`` is the table cell of the 2-D offset ``pos(i) - pos(j)``:
    ``(dy + H - 1) * (2W - 1) + (dx + W - 1)``. The row stride is ``2W - 1``
    (not ``W``), so every distinct offset has its own cell.
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    dy, dx = pos[:, :, None] - pos[:, None, :]  # each (N, N)
    return (dy + height - 1) * (2 * width - 1) + (dx + width - 1)


def expand_bias_table(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(heads, 2H-1, 2W-1)`` table -> ``(heads, N, N)`` bias: entry ``[h, i, j]`` is the table cell of
    the offset ``i - j`` (``index`` from :func:`relative_position_index`)."""
    return table.flatten(1)[:, index]


class RelativeAttention(MultiHeadAttention):
    """Relative attention over an ``H x W`` map, CoAtNet Eq. 3.

    Each head has a table ``w`` of ``(2H-1)(2W-1)`` learnable scalars, one per
    2-D offset, and the attention from position ``i`` to position ``j`` is

    * ``softmax="pre"`` (the paper's choice): ``A_ij = softmax_j(q_i.k_j / sqrt(d) + w_{i-j})``
    * ``softmax="post"``: ``A_ij = softmax_j(q_i.k_j / sqrt(d)) + w_{i-j}``

    The input is a channels-first map ``(B, dim, H, W)``; the output is
    ``(B, dim_out, H, W)``. The pre-softmax form runs through the fused
    ``scaled_dot_product_attention`` with the bias as ``attn_mask``.

    The bias is expanded from the table on every call (:func:`expand_bias_table`, a
    gather, cheap next to the attention itself); for inference,
    :meth:`materialise_bias` (called by :func:`coatlib.fuse`) stores the expanded
    bias once instead. A checkpoint whose tables were made for another map size is
    resized on load with bilinear interpolation, as the paper does when
    fine-tuning at 384.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        head_dim: int = 32,
        map_size: int | tuple[int, int] = 7,
        softmax: str = "pre",
        qkv_bias: bool = True,
    ):
        super().__init__(dim, dim_out, head_dim, qkv_bias)
        if softmax not in ("pre", "post"):
            raise ValueError(f"softmax must be 'pre' or 'post', got {softmax!r}")
        self.softmax = softmax
        self.map_size = pair(map_size)
        H, W = self.map_size
        self.relative_bias_table = nn.Parameter(torch.zeros(self.num_heads, 2 * H - 1, 2 * W - 1))
        nn.init.trunc_normal_(self.relative_bias_table, std=0.02)
        self.register_buffer("relative_index", relative_position_index(H, W), persistent=False)
        self.register_buffer("materialised_bias", None)  # None: expand the table at every call

    def relative_bias(self) -> torch.Tensor:
        """The bias ``w_{i-j}``: ``(heads, N, N)``, ``N = H*W``, expanded from the table (or, after
        :meth:`materialise_bias`, the stored one)."""
        if self.materialised_bias is not None:
            return self.materialised_bias
        return expand_bias_table(self.relative_bias_table, self.relative_index)

    def materialise_bias(self) -> None:
        """For inference only (:func:`coatlib.fuse` calls it): store the expanded bias ``(heads, N, N)``
        as the buffer ``materialised_bias`` and drop the table, so that no call gathers it again. The
        bias can no longer learn or be resized: keep the original module for that."""
        bias = self.relative_bias().detach().clone()
        del self.relative_bias_table, self.relative_index
        self.materialised_bias = bias

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The matrix that multiplies the values, ``(B, heads, N, N)`` (for "post": softmax + bias)."""
        q, k, _ = self.qkv_heads(self.tokens(x))
        bias = self.relative_bias().to(q.dtype)
        if self.softmax == "pre":
            return self.logits(q, k, bias).softmax(-1)
        return self.logits(q, k, None).softmax(-1) + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        q, k, v = self.qkv_heads(self.tokens(x))  # (B, dim, H, W) -> 3 x (B, heads, N, head_dim)
        if self.softmax == "pre":  # Eq. 3: softmax(q.k / sqrt(d) + w[i - j]) v
            out = self.attend(q, k, v, self.relative_bias())
        else:  # (softmax(q.k / sqrt(d)) + w[i - j]) v
            out = (self.logits(q, k, None).softmax(-1) + self.relative_bias().to(q.dtype)) @ v
        out = self.merge_heads(out)  # (B, N, dim_out)
        return rearrange(out, "b (h w) c -> b c h w", h=H, w=W)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H, W) -> (B, H*W, dim)``, after checking the map size."""
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.map_size:
            raise ValueError(
                f"RelativeAttention was built for a {self.map_size[0]}x{self.map_size[1]} map (B, C, H, W) "
                f"but got shape {tuple(x.shape)}: build it with map_size=(H, W) or call resize_bias_table()"
            )
        return rearrange(x, "b c h w -> b (h w) c")

    def resize_bias_table(self, map_size: int | tuple[int, int]) -> None:
        """Resize the table to a new ``H' x W'`` map by bilinear interpolation (fine-tuning at 384)."""
        if self.materialised_bias is not None:
            raise RuntimeError("a fused model's bias is fixed: resize the original model, then fuse it again")
        H, W = pair(map_size)
        with torch.no_grad():
            table = resize_table(self.relative_bias_table.data, (2 * H - 1, 2 * W - 1))
        self.relative_bias_table = nn.Parameter(table, requires_grad=self.relative_bias_table.requires_grad)
        self.map_size = (H, W)
        self.relative_index = relative_position_index(H, W).to(self.relative_index.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "relative_bias_table"
        if key in state_dict and state_dict[key].shape != self.relative_bias_table.shape:
            state_dict[key] = resize_table(state_dict[key], tuple(self.relative_bias_table.shape[1:]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, map_size={self.map_size}, softmax={self.softmax!r}"


def resize_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a ``(heads, h, w)`` bias table to ``(heads, *size)``."""
    if tuple(table.shape[1:]) == tuple(size):
        return table
    out = F.interpolate(table[None].float(), size=size, mode="bilinear", align_corners=True)
    return out[0].to(table.dtype)
