"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale").

The image is cut into 16x16 patches, each linearly embedded (a 16x16 stride-16
conv); a learnable class token is prepended and a learnable absolute position
embedding added (Eq. 1); then L pre-norm Transformer encoder blocks (Eq. 2, 3)
and a linear head on the final class token (Eq. 4). ViT-B/16 and L/16 follow
the paper's Table 1; Ti/16 and S/16 are DeiT's sizes (Touvron et al. 2021,
"Training data-efficient image transformers", Table 1).

The encoder block here (``EncoderBlock``) takes its attention module as an
argument: Swin reuses it with window attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from coatlib.attention import MultiHeadAttention
from coatlib.checkpoints import Convert, Rename, as_is, renamer
from coatlib.layers import DropPath, Mlp, check_image_size, check_images, drop_path_rates, init_weights, pair
from coatlib.registry import register_model


@dataclass(frozen=True)
class ViTConfig:
    """One row of ViT's Table 1 (DeiT's Table 1 for Ti and S)."""

    patch: int
    dim: int  # hidden size D
    depth: int  # layers L
    heads: int
    mlp_dim: int


CONFIGS: dict[str, ViTConfig] = {
    "vit_ti_16": ViTConfig(16, 192, 12, 3, 768),  # DeiT-Ti
    "vit_s_16": ViTConfig(16, 384, 12, 6, 1536),  # DeiT-S
    "vit_b_16": ViTConfig(16, 768, 12, 12, 3072),  # ViT-Base
    "vit_l_16": ViTConfig(16, 1024, 24, 16, 4096),  # ViT-Large
}


class PatchEmbed(nn.Module):
    """Split the image into ``patch x patch`` patches and embed each linearly: a conv with
    kernel = stride = patch. Returns a channels-last grid ``(B, H/patch, W/patch, dim)``,
    normalised when ``norm=True`` (Swin)."""

    def __init__(self, in_chans: int, dim: int, patch: int, norm: bool = False, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block (ViT Eq. 2, 3): ``x <- x + Attn(LN(x))``, ``x <- x + MLP(LN(x))``.

    ``attn`` maps normalised tokens (any leading shape, features last) to the
    same shape: ``MultiHeadAttention`` for ViT, ``WindowAttention`` for Swin.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_dim: int, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT: patch embedding + class token + position embedding, L encoder blocks, LayerNorm, linear head.

    Image sizes: multiples of the patch size. The position embedding is
    learned for the grid of ``image_size``; other sizes get it resized by
    bicubic interpolation, on the fly in ``forward`` and when a state dict made
    for another size is loaded (the paper's section 3.2 "fine-tuning and higher
    resolution").
    """

    def __init__(
        self,
        config: ViTConfig,
        num_classes: int = 1000,
        image_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.config, self.in_chans = config, in_chans
        H, W = check_image_size(image_size, config.patch, config.patch)
        self.grid = (H // config.patch, W // config.patch)
        D = config.dim
        self.patch_embed = PatchEmbed(in_chans, D, config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], D))
        self.blocks = nn.Sequential(*[
            EncoderBlock(D, MultiHeadAttention(D, head_dim=D // config.heads), config.mlp_dim, dp)
            for dp in drop_path_rates(drop_path_rate, config.depth)
        ])  # fmt: skip
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, num_classes)
        init_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, 1 + N, D)``, class token first."""
        check_images(x, self.in_chans, self.config.patch, self.config.patch, dtype=next(self.parameters()).dtype)
        x = self.patch_embed(x)  # (B, h, w, D)
        grid = tuple(x.shape[1:3])
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.flatten(1, 2)], dim=1)
        x = x + (self.pos_embed if grid == self.grid else resize_pos_embed(self.pos_embed, grid, self.grid))
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            state_dict[key] = resize_pos_embed(state_dict[key], self.grid)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def resize_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Resize a ``(1, 1 + h*w, D)`` position embedding (class token first) from the
    ``old_grid`` (default: square) to ``grid`` by bicubic interpolation with aligned
    corners (torchvision's ``interpolate_embeddings``); the class token's entry is kept."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    if old_grid is None:
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"a position embedding of {patches.shape[1]} patches is not a square grid")
        old_grid = (side, side)
    patches = patches.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=pair(grid), mode="bicubic", align_corners=True)
    return torch.cat([cls, patches.to(pos_embed.dtype).flatten(2).transpose(1, 2)], dim=1)


@register_model
def vit_ti_16(**kwargs) -> VisionTransformer:
    """ViT-Ti/16 (DeiT-Ti, Touvron et al. 2021, Table 1): 5.7M parameters."""
    return VisionTransformer(CONFIGS["vit_ti_16"], **kwargs)


@register_model
def vit_s_16(**kwargs) -> VisionTransformer:
    """ViT-S/16 (DeiT-S, Touvron et al. 2021, Table 1): 22.1M parameters."""
    return VisionTransformer(CONFIGS["vit_s_16"], **kwargs)


@register_model
def vit_b_16(**kwargs) -> VisionTransformer:
    """ViT-B/16 (Dosovitskiy et al. 2021, Table 1, ViT-Base): 86.6M parameters."""
    return VisionTransformer(CONFIGS["vit_b_16"], **kwargs)


@register_model
def vit_l_16(**kwargs) -> VisionTransformer:
    """ViT-L/16 (Dosovitskiy et al. 2021, Table 1, ViT-Large): 304.3M parameters."""
    return VisionTransformer(CONFIGS["vit_l_16"], **kwargs)


# torchvision's names -> coatlib's (``coatlib.load_torchvision_weights``)
TORCHVISION_RULES = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_", ".attn.qkv."),  # nn.MultiheadAttention's stacked q, k, v = our qkv Linear
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
]


def torchvision_mapping(model: VisionTransformer) -> tuple[Rename, Convert]:
    """``(rename, convert)`` from torchvision's ViT state dict to ``model``'s (the position embedding of
    another image size is resized when it loads)."""
    return renamer(TORCHVISION_RULES), as_is
