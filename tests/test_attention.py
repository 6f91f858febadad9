"""RelativeAttention (CoAtNet Eq. 3): equivalences, the bias table, the cache and resizing."""
import pytest
import torch

from coatlib.attention import MultiHeadAttention, RelativeAttention, relative_position_index


def make(map_size=(4, 5), softmax="pre", dim=32, head_dim=8, seed=0):
    torch.manual_seed(seed)
    return RelativeAttention(dim, dim, head_dim=head_dim, map_size=map_size, softmax=softmax)


def explicit(attn: RelativeAttention, x: torch.Tensor) -> torch.Tensor:
    """Reference: weights @ values, written out with no fused kernel."""
    B, H, W, _ = x.shape
    _, _, v = attn.qkv_heads(x.flatten(1, 2))
    out = attn.attention_weights(x) @ v
    return attn.proj(out.transpose(1, 2).flatten(2)).view(B, H, W, -1)


@pytest.mark.parametrize("softmax", ["pre", "post"])
@pytest.mark.parametrize("map_size", [(4, 4), (3, 6)])
def test_forward_equals_explicit_path(softmax, map_size):
    attn = make(map_size, softmax)
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    x = torch.randn(2, *map_size, 32)
    assert torch.allclose(attn(x), explicit(attn, x), atol=1e-5)


def test_sdpa_path_equals_unfused_path():
    attn = make((5, 5))
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    x = torch.randn(3, 5, 5, 32)
    fused = attn(x)
    attn.fused = False
    assert torch.allclose(fused, attn(x), atol=1e-5)


def test_zero_input_pre_softmax_is_softmax_of_bias_row():
    attn = make((3, 4), "pre")
    with torch.no_grad():
        attn.relative_bias_table.normal_()
        attn.qkv.bias.zero_()
    a = attn.attention_weights(torch.zeros(1, 3, 4, 32))[0]
    assert torch.allclose(a, attn.relative_bias().softmax(-1), atol=1e-6)


def test_zero_input_post_softmax_is_uniform_plus_bias_row():
    attn = make((3, 4), "post")
    with torch.no_grad():
        attn.relative_bias_table.normal_()
        attn.qkv.bias.zero_()
    a = attn.attention_weights(torch.zeros(1, 3, 4, 32))[0]
    assert torch.allclose(a, 1 / 12 + attn.relative_bias(), atol=1e-6)


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


def test_eval_cache_is_used_and_invalidated():
    attn = make((3, 3)).eval()
    with torch.no_grad():
        b1 = attn.relative_bias()
        assert attn.relative_bias() is b1  # cached
        attn.relative_bias_table.add_(1.0)  # in-place change bumps the version
        b2 = attn.relative_bias()
        assert b2 is not b1 and torch.allclose(b2, b1 + 1)
        attn.load_state_dict({k: v.clone() * 0 for k, v in attn.state_dict().items()})
        assert torch.count_nonzero(attn.relative_bias()) == 0


def test_training_mode_bias_has_gradient():
    attn = make((3, 3)).train()
    attn(torch.randn(2, 3, 3, 32)).sum().backward()
    assert attn.relative_bias_table.grad is not None
    assert attn.relative_bias_table.grad.abs().sum() > 0


def test_resize_table_bilinear():
    attn = make((3, 3), dim=8, head_dim=8)
    with torch.no_grad():  # a linear ramp along x stays a ramp after bilinear resizing
        attn.relative_bias_table.copy_(torch.linspace(-1, 1, 5).expand(1, 5, 5))
    attn.resize_bias_table((6, 6))
    assert attn.relative_bias_table.shape == (1, 11, 11)
    assert torch.allclose(attn.relative_bias_table[0, 4], torch.linspace(-1, 1, 11), atol=1e-6)
    assert attn(torch.randn(1, 6, 6, 8)).shape == (1, 6, 6, 8)


def test_state_dict_from_other_map_size_is_resized_on_load():
    small, big = make((3, 3)), make((6, 6))
    with torch.no_grad():
        small.relative_bias_table.fill_(0.5)
    big.load_state_dict(small.state_dict())
    assert big.relative_bias_table.shape == (4, 11, 11)
    assert torch.allclose(big.relative_bias_table, torch.full((4, 11, 11), 0.5))


def test_wrong_map_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"built for a 4x5 map"):
        make((4, 5))(torch.randn(1, 5, 4, 32))


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
            return self.attn(x.permute(0, 2, 3, 1))

    model = Wrap()
    fused = coatlib.count_flops(model, 4)
    model.attn.fused = False
    explicit = coatlib.count_flops(model, 4)
    linear = 16 * (32 * 96 + 32 * 32)  # qkv and output projections
    assert fused == explicit == linear + 2 * 16 * 16 * 32
