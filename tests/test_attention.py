"""RelativeAttention (CoAtNet Eq. 3): equivalences, the bias table and resizing."""

import pytest
import torch
import torch.nn.functional as F

from coatlib.attention import MultiHeadAttention, RelativeAttention, relative_position_index, resize_table


def make(map_size=(4, 5), softmax="pre", dim=32, head_dim=8, seed=0):
    torch.manual_seed(seed)
    return RelativeAttention(dim, dim, head_dim=head_dim, map_size=map_size, softmax=softmax)


def offset_bias(table: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """w[i - j] for every pair of positions, built from the offsets with plain loops: (heads, N, N)."""
    pos = [(i // W, i % W) for i in range(H * W)]
    return torch.stack(
        [torch.stack([table[:, yi - yj + H - 1, xi - xj + W - 1] for (yj, xj) in pos]) for (yi, xi) in pos]
    ).permute(2, 0, 1)


def reference(attn: RelativeAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3 written out from the weights, independent of the module's own helpers."""
    B, C, H, W = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    q, k, v = (
        F.linear(tokens, attn.qkv.weight, attn.qkv.bias).view(B, H * W, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    )
    logits = q @ k.transpose(-1, -2) / attn.head_dim**0.5
    w = offset_bias(attn.relative_bias_table, H, W)
    a = (logits + w).softmax(-1) if attn.softmax == "pre" else logits.softmax(-1) + w
    out = F.linear((a @ v).transpose(1, 2).reshape(B, H * W, -1), attn.proj.weight, attn.proj.bias)
    return out.transpose(1, 2).reshape(B, -1, H, W)


@pytest.mark.parametrize("softmax", ["pre", "post"])
@pytest.mark.parametrize("map_size", [(4, 4), (3, 6)])
def test_forward_equals_eq3_built_from_offsets(softmax, map_size):
    attn = make(map_size, softmax)
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    x = torch.randn(2, 32, *map_size)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference(attn, x), atol=1e-5, rtol=1e-5)


def test_sdpa_path_equals_unfused_path():
    attn = make((5, 5))
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    x = torch.randn(3, 32, 5, 5)
    fused = attn(x)
    attn.fused = False
    assert torch.allclose(fused, attn(x), atol=1e-5)


def test_zero_input_pre_softmax_is_softmax_of_bias_row():
    attn = make((3, 4), "pre")
    with torch.no_grad():
        attn.relative_bias_table.normal_()
        attn.qkv.bias.zero_()
    a = attn.attention_weights(torch.zeros(1, 32, 3, 4))[0]
    assert torch.allclose(a, offset_bias(attn.relative_bias_table, 3, 4).softmax(-1), atol=1e-6)


def test_zero_input_post_softmax_is_uniform_plus_bias_row():
    attn = make((3, 4), "post")
    with torch.no_grad():
        attn.relative_bias_table.normal_()
        attn.qkv.bias.zero_()
    a = attn.attention_weights(torch.zeros(1, 32, 3, 4))[0]
    assert torch.allclose(a, 1 / 12 + offset_bias(attn.relative_bias_table, 3, 4), atol=1e-6)


@pytest.mark.parametrize("H,W", [(4, 4), (3, 7), (7, 3)])
def test_every_offset_has_its_own_table_entry(H, W):
    attn = make((H, W), dim=16, head_dim=8)
    with torch.no_grad():
        attn.relative_bias_table.copy_(torch.randn_like(attn.relative_bias_table))
    bias = attn.relative_bias()
    assert bias.shape == (2, H * W, H * W)
    for h in range(2):
        assert bias[h].unique().numel() == (2 * H - 1) * (2 * W - 1)


def test_bias_depends_only_on_offset():
    H, W = 3, 5
    attn = make((H, W), dim=16, head_dim=8)
    bias = attn.relative_bias()
    pos = [(i // W, i % W) for i in range(H * W)]
    for i, (yi, xi) in enumerate(pos):
        for j, (yj, xj) in enumerate(pos):
            assert torch.equal(bias[:, i, j], attn.relative_bias_table[:, yi - yj + H - 1, xi - xj + W - 1])


def test_index_uses_row_stride_2w_minus_1():
    idx = relative_position_index(2, 3)
    # offset (dy=1, dx=-2) between position (1,0) and (0,2): row 2, column 0 of a 3x5 table
    assert idx[3, 2] == 2 * 5 + 0
    assert idx.max() == 3 * 5 - 1 and idx.min() == 0


@pytest.mark.parametrize("softmax", ["pre", "post"])
def test_the_table_gets_gradients_and_learns(softmax):
    """Fit a target made by another table: the loss falls and the table moves towards it."""
    torch.manual_seed(0)
    attn = make((3, 3), softmax)
    target = make((3, 3), softmax, seed=1)
    with torch.no_grad():
        target.load_state_dict({**attn.state_dict(), "relative_bias_table": torch.randn(4, 5, 5)})
    x = torch.randn(8, 32, 3, 3)
    with torch.no_grad():
        y = target(x)
    optimizer = torch.optim.Adam([attn.relative_bias_table], lr=0.05)
    losses = []
    for _ in range(60):
        loss = (attn(x) - y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < 0.2 * losses[0]
    start = torch.zeros(4, 5, 5).normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    assert (attn.relative_bias_table - target.relative_bias_table).abs().mean() < (
        start - target.relative_bias_table
    ).abs().mean()


def test_resize_table_is_bilinear_with_aligned_corners():
    attn = make((3, 3), dim=16, head_dim=8)
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    table = attn.relative_bias_table.detach().clone()
    attn.resize_bias_table((6, 5))
    expected = F.interpolate(table[None], size=(11, 9), mode="bilinear", align_corners=True)[0]
    torch.testing.assert_close(attn.relative_bias_table.detach(), expected)
    assert attn(torch.randn(1, 16, 6, 5)).shape == (1, 16, 6, 5)


def test_state_dict_from_other_map_size_is_resized_on_load():
    small, big = make((3, 3)), make((6, 6))
    with torch.no_grad():
        small.relative_bias_table.normal_()
    big.load_state_dict(small.state_dict())
    expected = F.interpolate(
        small.relative_bias_table.detach()[None], size=(11, 11), mode="bilinear", align_corners=True
    )[0]
    torch.testing.assert_close(big.relative_bias_table.detach(), expected)


def test_wrong_map_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"built for a 4x5 map"):
        make((4, 5))(torch.randn(1, 32, 5, 4))


def test_head_dim_must_divide_width():
    with pytest.raises(ValueError, match="head size 12 does not divide the width 32"):
        MultiHeadAttention(32, head_dim=12)


def test_bad_softmax_mode():
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        make(softmax="middle")


def test_translation_equivariance_of_zero_content_attention():
    """With q = k = 0, pre-softmax weights depend on i - j only: shifting the query and the key
    together by one column leaves every interior weight unchanged."""
    H, W = 4, 6
    attn = make((H, W))
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    bias = attn.relative_bias().view(4, H, W, H, W)
    assert torch.equal(bias[:, :, :-1, :, :-1], bias[:, :, 1:, :, 1:])


def test_count_flops_counts_fused_attention():
    """The fused CPU kernel must be counted like the explicit matmuls: 2 * N^2 * D MACs per map."""
    import coatlib

    class Wrap(torch.nn.Module):
        in_chans = 32

        def __init__(self):
            super().__init__()
            self.attn = make((4, 4))

        def forward(self, x):
            return self.attn(x)

    model = Wrap()
    fused = coatlib.count_flops(model, 4)
    model.attn.fused = False
    explicit = coatlib.count_flops(model, 4)
    linear = 16 * (32 * 96 + 32 * 32)  # qkv and output projections
    assert fused == explicit == linear + 2 * 16 * 16 * 32


def test_resizing_keeps_a_frozen_table_frozen():
    attn = RelativeAttention(32, head_dim=16, map_size=4)
    attn.relative_bias_table.requires_grad_(False)
    attn.resize_bias_table(6)
    assert attn.relative_bias_table.shape == (2, 11, 11) and not attn.relative_bias_table.requires_grad


def test_a_head_size_that_does_not_divide_names_the_nearest_divisor():
    with pytest.raises(ValueError, match=r"divide the width 96: .*\(e\.g\. 32\)"):
        RelativeAttention(96, head_dim=36)


def test_multi_head_attention_adds_the_bias_before_the_softmax():
    """Eq. 2 with a bias b: softmax_j(q_i . k_j / sqrt(d) + b_ij) v_j, written out from the weights."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, head_dim=8)
    x, bias = torch.randn(2, 5, 16), torch.randn(2, 5, 5) * 3
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-1, -2) / 8**0.5 + bias).softmax(-1)
    expected = F.linear((a @ v).transpose(1, 2).reshape(2, 5, 16), attn.proj.weight, attn.proj.bias)
    torch.testing.assert_close(attn(x, bias), expected, atol=1e-5, rtol=1e-5)


def test_post_softmax_weights_are_a_softmax_over_the_keys_plus_the_bias():
    attn = make((3, 4), "post")
    x = torch.randn(2, 32, 3, 4)
    weights = attn.attention_weights(x) - attn.relative_bias()  # (B, heads, queries, keys)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 12))


def test_a_resized_table_keeps_its_dtype():
    table = torch.randn(2, 7, 7, dtype=torch.bfloat16)
    assert resize_table(table, (11, 11)).dtype == torch.bfloat16
