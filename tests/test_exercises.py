"""The exercise checks: each accepts a correct answer and catches wrong ones with a useful message."""

import einops
import pytest
import torch
import torch.nn.functional as F

import coatlib
from coatlib.attention import RelativeAttention
from coatlib.blocks import MBConv
from coatlib.teaching import exercises as ex
from coatlib.teaching.exercises import _solutions as ref


def run(check, fn):
    result = check(fn, verbose=False)
    assert str(result).startswith(check.__name__ + ": ")
    return result


def passes(check, fn):
    result = run(check, fn)
    assert result and result.message == "correct", result.message


def fails(check, fn, *fragments):
    result = run(check, fn)
    assert not result and result.message.startswith("not yet.")
    for fragment in fragments:
        assert fragment in result.message, result.message
    return result


def test_reports_are_printed_and_every_check_registered(capsys):
    ex.check_receptive_field(receptive_field)
    assert capsys.readouterr().out == "check_receptive_field: correct\n"
    assert set(ex.CHECKS) == {n for n in dir(ex) if n.startswith("check_")}


def test_stubs_and_crashes_and_non_functions_are_reported():
    def depthwise_conv(x, weight):
        raise NotImplementedError

    fails(ex.check_depthwise_conv, depthwise_conv, "raises NotImplementedError", "replace the stub")
    fails(ex.check_depthwise_conv, lambda x, w: x @ w, "raised RuntimeError", "tensor of shape (2, 3, 8, 8)")
    fails(ex.check_depthwise_conv, torch.zeros(3), "expected your function, got Tensor")


# chapter 1 ------------------------------------------------------------------


def depthwise_conv(x, weight, pad=None, mode="constant"):
    """Written differently from the book's loop: all shifted windows stacked, one einsum."""
    k = weight.shape[-1]
    p = k // 2 if pad is None else pad
    padded = F.pad(x, (p, p, p, p), mode=mode)
    H, W = padded.shape[-2] - k + 1, padded.shape[-1] - k + 1
    windows = torch.stack([padded[:, :, a : a + H, b : b + W] for a in range(k) for b in range(k)], 2)
    return torch.einsum("bcnhw,cn->bchw", windows, weight.flatten(1))


def depthwise_conv_with_unfold(x, weight):
    C, k = weight.shape[0], weight.shape[-1]
    cols = F.unfold(x, k, padding=k // 2).view(x.shape[0], C, k * k, -1)
    return (cols * weight.view(1, C, k * k, 1)).sum(2).view_as(x)


def test_depthwise_conv():
    passes(ex.check_depthwise_conv, depthwise_conv)
    fails(
        ex.check_depthwise_conv,
        lambda x, w: depthwise_conv(x, w, pad=0),
        "returned shape (2, 3, 6, 6); expected (2, 3, 8, 8)",
        "no padding",
    )
    fails(
        ex.check_depthwise_conv,
        lambda x, w: depthwise_conv(x, w.flip(-2, -1)),
        "values are wrong; the first at [batch=0, channel=0, row=0, col=0]",
        "you flipped the kernel",
    )
    fails(
        ex.check_depthwise_conv,
        lambda x, w: depthwise_conv(x.sum(1, keepdim=True).expand_as(x), w),
        "summed over the input channels",
    )
    replicate = lambda x, w: depthwise_conv(x, w, mode="replicate")  # noqa: E731
    fails(ex.check_depthwise_conv, replicate, "wrong only within 1 pixel(s) of the border")
    fails(ex.check_depthwise_conv, lambda x, w: depthwise_conv(x, w) + 0.1, "expected", "the first at [batch=0")


def mbconv_macs(c, k, h, w):
    e = 4 * c
    return h * w * (c * e + e * k * k + e * c) + 2 * e * (c // 4)


def test_mbconv_macs():
    passes(ex.check_mbconv_macs, mbconv_macs)
    fails(ex.check_mbconv_macs, lambda c, k, h, w: h * w * 8 * c * (c + k * k // 2), "returned", "expected 242,067,456")
    fails(ex.check_mbconv_macs, lambda c, k, h, w: h * w * 4 * c * (2 * c + k * k), "add the squeeze-excitation")
    fails(ex.check_mbconv_macs, lambda c, k, h, w: h * w * (8 * c * c + c * k * k) + 2 * c * c, "expanded 4c channels")
    fails(ex.check_mbconv_macs, lambda c, k, h, w: h * w * c * c * k * k, "standard k x k convolution")
    fails(ex.check_mbconv_macs, lambda c, k, h, w: "many", "returned a str; return a number")


def test_receptive_field_reference_matches_gradients():
    """The reference formula agrees with the receptive field measured by back-propagation."""
    for ks, ss in [([3, 3, 3], [2, 2, 1]), ([7, 3, 3], [2, 1, 2])]:
        x = torch.zeros(1, 1, 64, 64, requires_grad=True)
        y = x
        for k, s in zip(ks, ss):
            y = F.conv2d(y, torch.ones(1, 1, k, k), stride=s)
        y[0, 0, 0, 0].backward()
        rows = x.grad[0, 0].abs().sum(1).nonzero()
        assert len(rows) == ref.receptive_field_of(ks, ss)


def receptive_field(kernel_sizes, strides):
    """Written differently from the reference: from the output back to the input."""
    size = 1
    for k, s in reversed(list(zip(kernel_sizes, strides))):
        size = (size - 1) * s + k
    return size


def test_receptive_field():
    passes(ex.check_receptive_field, receptive_field)
    fails(
        ex.check_receptive_field,
        lambda ks, ss: 1 + sum(k - 1 for k in ks),
        "returned 7, expected 15",
        "the strides matter",
    )
    fails(
        ex.check_receptive_field,
        lambda ks, ss: sum(ks),
        "([3, 3, 3], [1, 1, 1]) returned 9, expected 7",
        "each layer adds k - 1",
    )

    def own_stride(ks, ss):
        size, step = 1, 1
        for k, s in zip(ks, ss):
            step *= s
            size += (k - 1) * step
        return size

    fails(ex.check_receptive_field, own_stride, "does not widen its own window")


# chapter 2 ------------------------------------------------------------------


def masked_attention(q, k, v, keep):
    scores = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~keep, float("-inf"))
    return torch.where(keep.any(-1, keepdim=True), scores.softmax(-1), 0.0).nan_to_num(0.0) @ v


def test_masked_attention_reference_is_sdpa_with_a_bool_mask():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    keep = torch.rand(5, 6) < 0.5
    keep[:, 0] = True  # every query keeps a key: SDPA is defined there
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert torch.allclose(ref.attention_with_mask(q, k, v, keep), want, atol=1e-5)


def test_masked_attention():
    passes(ex.check_masked_attention, masked_attention)
    scores = lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # noqa: E731
    fails(
        ex.check_masked_attention,
        lambda q, k, v, m: scores(q, k).masked_fill(~m, float("-inf")).softmax(-1) @ v,
        "is nan, expected 0",
        "return zeros for it",
    )
    fails(ex.check_masked_attention, lambda q, k, v, m: (scores(q, k) * m).softmax(-1) @ v, "exp(0) = 1")
    fails(ex.check_masked_attention, lambda q, k, v, m: (scores(q, k).softmax(-1) * m) @ v, "no longer sum to 1")
    fails(ex.check_masked_attention, lambda q, k, v, m: masked_attention(q, k, v, ~m), "mask where keep is False")
    fails(
        ex.check_masked_attention,
        lambda q, k, v, m: masked_attention(q * q.shape[-1] ** 0.5, k, v, m),
        "divide the scores by sqrt(d)",
    )
    fails(
        ex.check_masked_attention,
        lambda q, k, v, m: masked_attention(q / q.shape[-1] ** 0.5, k, v, m),
        "you divided the scores by d",
    )
    wrong_axis = lambda q, k, v, m: scores(q, k).masked_fill(~m, float("-inf")).softmax(-2).nan_to_num(0.0) @ v  # noqa: E731
    fails(ex.check_masked_attention, wrong_axis, "the last axis (dim=-1)")
    fails(ex.check_masked_attention, lambda q, k, v, m: masked_attention(q, k, v, m) / 2, "0.5 times the expected")


def patchify(images, p):
    return einops.rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)


def test_patchify():
    passes(ex.check_patchify, patchify)
    fails(
        ex.check_patchify,
        lambda x, p: einops.rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p),
        "(C, p, p) order",
    )
    fails(
        ex.check_patchify,
        lambda x, p: einops.rearrange(x, "b c (h p1) (w p2) -> b (w h) (c p1 p2)", p1=p, p2=p),
        "column by column",
    )
    fails(
        ex.check_patchify,
        lambda x, p: patchify(x, p).transpose(1, 2),
        "returned shape (2, 48, 4); expected (2, 4, 48)",
        "tokens go along dimension 1",
    )


def attention_macs(n, dim):
    return 4 * n * dim * dim + 2 * n * n * dim


def test_attention_macs():
    passes(ex.check_attention_macs, attention_macs)
    fails(ex.check_attention_macs, lambda n, d: 4 * n * d * d, "four projections only")
    fails(ex.check_attention_macs, lambda n, d: 4 * n * d * d + n * n * d, "two attention products")
    fails(ex.check_attention_macs, lambda n, d: 3 * n * d * d + 2 * n * n * d, "output projection")


# chapter 3 ------------------------------------------------------------------


def relative_index(H, W):
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    dy = ys.flatten()[:, None] - ys.flatten()[None, :]
    dx = xs.flatten()[:, None] - xs.flatten()[None, :]
    return (dy + H - 1) * (2 * W - 1) + (dx + W - 1)


def test_relative_index():
    passes(ex.check_relative_index, relative_index)
    fails(ex.check_relative_index, lambda H, W: relative_index(H, W).T, "query minus key")
    stride_w = lambda H, W: (relative_index(H, W) // (2 * W - 1)) * W + relative_index(H, W) % (2 * W - 1)
    fails(ex.check_relative_index, stride_w, "[query=0, key=0] is 8, expected 12", "not W")
    fails(ex.check_relative_index, lambda H, W: relative_index(H, W).float(), "return integers")


def test_relative_attention_reference_matches_coatlib():
    for softmax in ("pre", "post"):
        attn = RelativeAttention(16, head_dim=8, map_size=(2, 3), softmax=softmax)
        with torch.no_grad():
            attn.relative_bias_table.normal_()
        x = torch.randn(2, 16, 2, 3)
        q, k, v = attn.qkv_heads(x.flatten(2).transpose(1, 2))
        out = ref.attention_with_table(q, k, v, attn.relative_bias_table, softmax)
        want = attn.attention_weights(x) @ v
        assert torch.allclose(out, want, atol=1e-5)


def test_clipped_bias_reference():
    """With a table as large as the map (K = H - 1) nothing is clipped: it is the plain relative bias."""
    from coatlib.attention import relative_position_index

    table = torch.randn(2, 5, 7)
    assert torch.equal(ref.bias_with_clipping(table, 3, 4), table.flatten(1)[:, relative_position_index(3, 4)])
    small = torch.arange(9.0).view(1, 3, 3)  # K = L = 1
    bias = ref.bias_with_clipping(small, 1, 5)  # one row of 5: offsets -4..4 in x, clipped to -1..1
    assert bias[0, 0].tolist() == [4.0, 3.0, 3.0, 3.0, 3.0] and bias[0, 4].tolist() == [5.0, 5.0, 5.0, 5.0, 4.0]


def clipped_bias(table, H, W, reach=0):
    """Written differently from the reference: a loop over the pairs (``reach=-1``: the clamp-to-K-1 slip)."""
    K, L = (table.shape[1] - 1) // 2, (table.shape[2] - 1) // 2
    bias = torch.empty(table.shape[0], H * W, H * W)
    for i in range(H * W):
        for j in range(H * W):
            dy = max(-K - reach, min(K + reach, i // W - j // W))
            dx = max(-L - reach, min(L + reach, i % W - j % W))
            bias[:, i, j] = table[:, dy + K, dx + L]
    return bias


def test_clipped_bias():
    passes(ex.check_clipped_bias, clipped_bias)
    fails(ex.check_clipped_bias, lambda t, H, W: clipped_bias(t.flip(-2, -1), H, W), "not pos(j) - pos(i)")
    fails(ex.check_clipped_bias, lambda t, H, W: clipped_bias(t, H, W, reach=-1), "you clipped to -(K-1)..K-1")

    def unshifted(t, H, W):
        K, L = (t.shape[-2] - 1) // 2, (t.shape[-1] - 1) // 2
        rows, cols = torch.arange(H * W) // W, torch.arange(H * W) % W
        return t[:, (rows[:, None] - rows[None, :]).clamp(-K, K), (cols[:, None] - cols[None, :]).clamp(-L, L)]

    fails(ex.check_clipped_bias, unshifted, "add K")
    fails(ex.check_clipped_bias, lambda t, H, W: t[:, : H * W, : H * W], "returned shape")


def static_kernel(table, row, col):
    H, W = (table.shape[0] + 1) // 2, (table.shape[1] + 1) // 2
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return table[row - ys + H - 1, col - xs + W - 1].flatten().softmax(0).view(H, W)


def test_static_kernel_reference_matches_coatlib():
    attn = RelativeAttention(8, head_dim=8, map_size=(3, 4))
    with torch.no_grad():
        attn.relative_bias_table.normal_()
        attn.qkv.bias.zero_()
    a = attn.attention_weights(torch.zeros(1, 8, 3, 4))[0, 0]
    for i in range(12):
        assert torch.allclose(a[i].view(3, 4), static_kernel(attn.relative_bias_table[0], i // 4, i % 4), atol=1e-6)


def test_static_kernel():
    passes(ex.check_static_kernel, static_kernel)
    fails(ex.check_static_kernel, lambda t, r, c: static_kernel(t.flip(0, 1), r, c), "yours is w[j - i]")
    fails(
        ex.check_static_kernel, lambda t, r, c: static_kernel(t, r, c)[:, :-1], "returned shape (3, 2); expected (3, 3)"
    )
    H = lambda t: (t.shape[0] + 1) // 2
    W = lambda t: (t.shape[1] + 1) // 2
    raw = lambda t, r, c: t[r : r + H(t), c : c + W(t)].flip(0, 1)
    fails(ex.check_static_kernel, raw, "apply the softmax")
    whole_table = lambda t, r, c: t.flatten().softmax(0).view_as(t)[r : r + H(t), c : c + W(t)].flip(0, 1)
    fails(ex.check_static_kernel, whole_table, "not over the whole table")


# chapter 4 ------------------------------------------------------------------


def attention_memory(image_size, stage, width, batch):
    side = image_size // 2 ** (stage + 1)
    return batch * (width // 32) * (side * side) ** 2 * 4


def test_attention_memory():
    passes(ex.check_attention_memory, attention_memory)
    fails(
        ex.check_attention_memory,
        lambda i, s, w, b: attention_memory(i, s, 32, b),
        "returned 39,337,984, expected 118,013,952",
        "multiply by the number of heads",
    )
    fails(
        ex.check_attention_memory,
        lambda i, s, w, b: attention_memory(2 * i, s, w, b),
        "the stem halves the image first",
    )
    fails(ex.check_attention_memory, lambda i, s, w, b: attention_memory(i, s, w, b) // 4, "4 bytes")
    fails(ex.check_attention_memory, lambda i, s, w, b: attention_memory(i, s, w, 1), "(224, 3, 384, 8)", "batch size")


def window_attention_macs(h, w, window, dim):
    return 4 * h * w * dim * dim + 2 * h * w * window * window * dim


def test_window_attention_macs():
    passes(ex.check_window_attention_macs, window_attention_macs)
    fails(
        ex.check_window_attention_macs,
        lambda h, w, win, d: window_attention_macs(h, w, h, d),
        "expected 145,108,992",
        "global attention",
    )
    fails(ex.check_window_attention_macs, lambda h, w, win, d: 4 * h * w * d * d, "projections only")
    fails(
        ex.check_window_attention_macs,
        lambda h, w, win, d: 4 * h * w * d * d + 2 * h * w * win * d,
        "window^2 tokens, not window",
    )


def test_window_partition():
    passes(ex.check_window_partition, lambda x, w: einops.rearrange(x, "b (h p) (w q) c -> (b h w) (p q) c", p=w, q=w))
    fails(ex.check_window_partition, lambda x, w: x.reshape(-1, w * w, x.shape[-1]), "strips of whole rows")
    fails(
        ex.check_window_partition,
        lambda x, w: einops.rearrange(x, "b (h p) (w q) c -> (b w h) (p q) c", p=w, q=w),
        "list the windows row by row",
    )
    fails(
        ex.check_window_partition,
        lambda x, w: einops.rearrange(x, "b (h p) (w q) c -> (b h w) (q p) c", p=w, q=w),
        "tokens inside a window row by row",
    )
    fails(
        ex.check_window_partition,
        lambda x, w: x.reshape(-1, w, x.shape[-1]),
        "returned shape (24, 2, 3); expected (12, 4, 3)",
    )


# chapter 5 ------------------------------------------------------------------


def test_bias_params_reference_counts_the_models_tables():
    from coatlib.models.coatnet import CONFIGS

    for name, size in [
        ("coatnet_0", 224),
        ("coatnet_0", 384),
        ("coatnet_5", 512),
        ("coatnet_6", 512),
        ("coatnet_pico", 64),
    ]:
        with torch.device("meta"):
            model = coatlib.create_model(name, image_size=size)
        tables = sum(p.numel() for n, p in model.named_parameters() if n.endswith("relative_bias_table"))
        assert ref.bias_table_params(CONFIGS[name], size) == tables, (name, size)


def bias_params(config, size):
    """Written differently from the reference: stage by stage, from the map's side."""
    total = 0
    for index, side in ((2, size // 16), (3, size // 32)):
        tables = config.depths[index] * config.widths[index] // config.head_dim
        total += tables * (2 * side - 1) * (2 * side - 1)
    return total


def test_bias_params():
    passes(ex.check_bias_params, bias_params)

    def heads_of_32(config, size):
        return sum(
            d * (w // 32) * (2 * size // 2 ** (i + 1) - 1) ** 2
            for i, (d, w) in enumerate(zip(config.depths[2:], config.widths[2:]), start=3)
        )

    fails(ex.check_bias_params, heads_of_32, "width / config.head_dim")

    def map_not_offsets(config, size):
        return sum(
            d * (w // config.head_dim) * (size // 2 ** (i + 1)) ** 2
            for i, (d, w) in enumerate(zip(config.depths[2:], config.widths[2:]), start=3)
        )

    fails(ex.check_bias_params, map_not_offsets, "one entry per offset")
    fails(ex.check_bias_params, lambda c, s: bias_params(c, s) // c.depths[2] if c.depths[3] == 1 else 0, "returned")


def transformer_params(cin, cout, map_size, head_dim):
    h, w = map_size
    attention = cin * 3 * cout + 3 * cout + cout * cout + cout + cout // head_dim * (2 * h - 1) * (2 * w - 1)
    ffn = cout * 4 * cout + 4 * cout + 4 * cout * cout + cout
    shortcut = cin * cout + cout if cin != cout else 0
    return shortcut + 2 * cin + attention + 2 * cout + ffn


def test_transformer_params():
    passes(ex.check_transformer_params, transformer_params)

    def with_tables(per_block):
        """The right count, but with ``per_block(heads, one_table)`` bias entries instead of ``heads * one_table``."""

        def count(a, b, s, h):
            heads, one = b // h, (2 * s[0] - 1) * (2 * s[1] - 1)
            return transformer_params(a, b, s, h) - heads * one + per_block(heads, one)

        return count

    fails(
        ex.check_transformer_params,
        with_tables(lambda heads, one: 0),
        "returned 1,627,008, expected 1,635,756",
        "add the relative bias tables",
    )
    fails(ex.check_transformer_params, with_tables(lambda heads, one: one), "multiply by the number of heads")
    fails(ex.check_transformer_params, with_tables(lambda heads, one: 8 * one), "not a fixed 8")
    no_shortcut = lambda a, b, s, h: transformer_params(a, b, s, h) - (a * b + b if a != b else 0)  # noqa: E731
    fails(ex.check_transformer_params, no_shortcut, "the shortcut projects Pool(x)")


def resize_table(table, map_size):
    size = (2 * map_size[0] - 1, 2 * map_size[1] - 1)
    return F.interpolate(table[None], size=size, mode="bilinear", align_corners=True)[0]


def test_resize_table():
    passes(ex.check_resize_table, resize_table)
    fails(
        ex.check_resize_table,
        lambda t, s: F.interpolate(t[None], size=s, mode="bilinear", align_corners=True)[0],
        "returned shape (2, 12, 12)",
        "(2, 23, 23)",
    )
    fails(
        ex.check_resize_table,
        lambda t, s: F.interpolate(t[None], size=(2 * s[0] - 1, 2 * s[1] - 1), mode="bilinear")[0],
        "align_corners=True",
    )
    fails(
        ex.check_resize_table,
        lambda t, s: F.interpolate(t[None], size=(2 * s[0] - 1, 2 * s[1] - 1), mode="nearest")[0],
        "not by copying the nearest entry",
    )


# chapter 7 ------------------------------------------------------------------


def channels_last_strides(shape):
    N, C, H, W = shape
    return (H * W * C, 1, W * C, C)


def test_channels_last_strides():
    passes(ex.check_channels_last_strides, channels_last_strides)
    fails(
        ex.check_channels_last_strides,
        lambda s: (s[1] * s[2] * s[3], s[2] * s[3], s[3], 1),
        "returned [60, 20, 5, 1]",
        "usual (NCHW",
    )
    fails(ex.check_channels_last_strides, lambda s: (s[1] * s[2] * s[3], s[3] * s[1], s[1], 1), "in memory order")
    fails(ex.check_channels_last_strides, lambda s: (s[1] * s[2] * s[3], 1, s[3], s[1]), "the stride of H")
    fails(ex.check_channels_last_strides, lambda s: "NHWC", "return a tuple or list of ints")


def round_to_bf16(x):
    bits = x.view(torch.int32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000
    return bits.view(torch.float32)


def test_round_to_bf16():
    passes(ex.check_round_to_bf16, round_to_bf16)
    fails(ex.check_round_to_bf16, lambda x: (x.view(torch.int32) & -0x10000).view(torch.float32), "rounds towards zero")
    fails(
        ex.check_round_to_bf16,
        lambda x: ((x.view(torch.int32) + 0x8000) & -0x10000).view(torch.float32),
        "ties go to the even one",
    )
    fails(ex.check_round_to_bf16, lambda x: x.half().float(), "that is float16")
    fails(ex.check_round_to_bf16, lambda x: x.bfloat16().float(), "made a bfloat16 tensor")
    fails(ex.check_round_to_bf16, lambda x: round_to_bf16(x).double(), "returned a torch.float64 tensor")


def shard_indices(n, world, rank):
    per = -(-n // world)
    padded = [i % n for i in range(per * world)]
    return padded[rank::world]


def test_shard_indices():
    passes(ex.check_shard_indices, shard_indices)
    fails(
        ex.check_shard_indices,
        lambda n, w, r: list(range(r, n, w)),
        "(10, 3, 1) returned [1, 4, 7], expected [1, 4, 7, 0]",
        "pad by repeating the first indices",
    )
    fails(
        ex.check_shard_indices,
        lambda n, w, r: shard_indices(n, 1, 0)[r * -(-n // w) : (r + 1) * -(-n // w)],
        "not a consecutive block",
    )
    fails(ex.check_shard_indices, lambda n, w, r: list(range(r, n - n % w, w)), "pads rather than drops")


def ddp_gradient(model, images, labels, world):
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for x, y in zip(images.chunk(world), labels.chunk(world)):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        total = [t + g / world for t, g in zip(total, grads)]
    return total


def test_ddp_gradient():
    passes(ex.check_ddp_gradient, ddp_gradient)
    full = lambda m, x, y, w: list(torch.autograd.grad(F.cross_entropy(m(x), y), list(m.parameters())))  # noqa: E731
    fails(ex.check_ddp_gradient, full, "gradient of 0.weight", "BatchNorm normalises each process's share")
    fails(ex.check_ddp_gradient, lambda m, x, y, w: [g * w for g in ddp_gradient(m, x, y, w)], "2 times too large")
    fails(
        ex.check_ddp_gradient,
        lambda m, x, y, w: ddp_gradient(m, x[: len(x) // w], y[: len(y) // w], 1),
        "the first share only",
    )
    fails(
        ex.check_ddp_gradient,
        lambda m, x, y, w: ddp_gradient(m, x, y, w)[:2],
        "returned list of length 2; return a list of 6 tensors",
    )


def fsdp_state_bytes(n_params, gpus):
    return 16 * -(-n_params // gpus)


def test_fsdp_state_bytes():
    passes(ex.check_fsdp_state_bytes, fsdp_state_bytes)
    fails(ex.check_fsdp_state_bytes, lambda n, g: 16 * n, "returned 5,004,384, expected 2,502,192", "under DDP")
    fails(ex.check_fsdp_state_bytes, lambda n, g: 12 * -(-n // g), "you left out one of the three")
    fails(ex.check_fsdp_state_bytes, lambda n, g: 4 * -(-n // g), "the weights alone")
    fails(ex.check_fsdp_state_bytes, lambda n, g: 16 * (n // g), "(1,000, 3)", "round up")
    fails(ex.check_fsdp_state_bytes, lambda n, g: "many", "returned a str; return a number")


# chapter 6 ------------------------------------------------------------------


def scale_stage(channels, layers, width, depth):
    c = channels * width
    rounded = max(8, int(c + 4) // 8 * 8)
    return (rounded + 8 if rounded < 0.9 * c else rounded), -(-layers * depth // 1)


def test_scale_stage():
    passes(ex.check_scale_stage, lambda c, n, w, d: (int(scale_stage(c, n, w, d)[0]), int(scale_stage(c, n, w, d)[1])))
    fails(ex.check_scale_stage, lambda c, n, w, d: (round(c * w), n), "channels", "multiple of 8")
    fails(
        ex.check_scale_stage,
        lambda c, n, w, d: (scale_stage(c, n, w, d)[0], round(n * d)),
        "layers",
        "round the number of layers *up*",
    )
    fails(ex.check_scale_stage, lambda c, n, w, d: scale_stage(c, n, w, d)[0], "return a pair")


def shift_mask_answer(h, w, window, shift, regions=None):
    def default(L):
        p = torch.arange(L)
        return (p >= L - window).long() + (p >= L - shift).long()

    regions = regions or default
    labels = regions(h)[:, None] * 3 + regions(w)[None, :]
    labels = einops.rearrange(labels, "(a i) (b j) -> (a b) (i j)", i=window, j=window)
    return labels[:, :, None] != labels[:, None, :]


def test_shift_mask():
    passes(ex.check_shift_mask, shift_mask_answer)
    fails(ex.check_shift_mask, lambda h, w, win, s: ~shift_mask_answer(h, w, win, s), "*different* regions")
    fails(
        ex.check_shift_mask,
        lambda h, w, win, s: torch.zeros(h // win * (w // win), win * win, win * win, dtype=torch.bool),
        "values are wrong",
        "the map is shifted",
    )
    start = lambda win, s: lambda L: (torch.arange(L) >= win).long() + (torch.arange(L) >= s).long()  # noqa: E731
    fails(
        ex.check_shift_mask,
        lambda h, w, win, s: shift_mask_answer(h, w, win, s, start(win, s)),
        "[L - window, L - shift)",
    )
    fails(ex.check_shift_mask, lambda h, w, win, s: shift_mask_answer(h, w, win, s).float(), "return a bool tensor")
    column_major = lambda h, w, win, s: einops.rearrange(  # noqa: E731
        shift_mask_answer(h, w, win, s), "(a b) i j -> (b a) i j", a=h // win
    )
    fails(ex.check_shift_mask, column_major, "reading order")


# chapter 5c -----------------------------------------------------------------


def centre_gradient(net, images):
    images = images.clone().requires_grad_(True)
    out = net(images)
    h, w = out.shape[-2:]
    out[:, :, h // 2, w // 2].sum().backward()
    field = images.grad.abs().sum(1).mean(0)
    return field / field.sum()


def test_centre_gradient():
    passes(ex.check_centre_gradient, centre_gradient)
    fails(ex.check_centre_gradient, lambda n, x: centre_gradient(n, x) * 7, "sum to 1")

    def signed(net, images):
        images = images.clone().requires_grad_(True)
        out = net(images)
        out[:, :, out.shape[-2] // 2, out.shape[-1] // 2].sum().backward()
        field = images.grad.sum(1).mean(0)
        return field / field.sum()

    fails(ex.check_centre_gradient, signed, "absolute value")

    def whole_map(net, images):
        images = images.clone().requires_grad_(True)
        net(images).sum().backward()
        field = images.grad.abs().sum(1).mean(0)
        return field / field.sum()

    fails(ex.check_centre_gradient, whole_map, "only the centre output")


def flat_locality(H, W, radius):
    """Written differently from the reference: every query and key counted."""
    if radius < 0:
        return 0.0
    pairs = [(i, j) for i in range(H * W) for j in range(H * W)]
    near = sum(abs(i // W - j // W) <= radius and abs(i % W - j % W) <= radius for i, j in pairs)
    return near / len(pairs)


def test_flat_locality_reference_counts_the_pairs():
    for H, W, radius in [(8, 8, 1), (4, 4, 1), (5, 3, 2), (6, 6, 0)]:
        assert abs(ref.locality_of_flat_table(H, W, radius) - flat_locality(H, W, radius)) < 1e-6


def test_flat_locality():
    passes(ex.check_flat_locality, flat_locality)
    passes(ex.check_flat_locality, lambda H, W, r: torch.tensor(flat_locality(H, W, r)))
    fails(ex.check_flat_locality, lambda H, W, r: flat_locality(H, W, r) / 2, "0.5 times the expected one")
    fails(ex.check_flat_locality, lambda H, W, r: flat_locality(H, W, r + 1), "one wider")
    fails(ex.check_flat_locality, lambda H, W, r: flat_locality(H, W, r - 1) if r else 1 / (H * W), "(<=, not <)")
    fails(ex.check_flat_locality, lambda H, W, r: (2 * r + 1) ** 2 / (H * W), "fewer neighbours")
    fails(ex.check_flat_locality, lambda H, W, r: flat_locality(H, W, r) * H * W, "not a count")
    fails(ex.check_flat_locality, lambda H, W, r: "0.12", "return a number")


def gaussian_table(H, W, sigma):
    """Written differently from the reference: the squared distance of every offset from a grid."""
    dy, dx = torch.meshgrid(torch.arange(2 * H - 1) - (H - 1), torch.arange(2 * W - 1) - (W - 1), indexing="ij")
    return torch.stack([dy, dx]).float().pow(2).sum(0) / (-2 * sigma * sigma)


def test_gaussian_table():
    passes(ex.check_gaussian_table, gaussian_table)
    fails(ex.check_gaussian_table, lambda H, W, s: -gaussian_table(H, W, s), "minus sign")
    fails(ex.check_gaussian_table, lambda H, W, s: gaussian_table(H, W, s) * 2, "not sigma^2")
    fails(ex.check_gaussian_table, lambda H, W, s: gaussian_table(H, W, s).exp(), "leave out the exp")
    fails(ex.check_gaussian_table, lambda H, W, s: gaussian_table(H, W, s)[:H, :W], "(2H-1) x (2W-1)")
    fails(ex.check_gaussian_table, lambda H, W, s: gaussian_table(H, W, s) / 2, "0.5 times the expected")


def test_gaussian_table_in_a_model_gives_a_gaussian_attention_around_the_query():
    """Zero content and the Gaussian table: the attention from a query is exp(-d^2 / 2 sigma^2), normalised."""
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", image_size=128).eval()
    layer = model.stages[2].blocks[0].attn
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.zero_()
        layer.relative_bias_table.copy_(ref.gaussian_bump(8, 8, 1.0).expand_as(layer.relative_bias_table))
    from coatlib.inspection import attention_maps

    maps = attention_maps(model, torch.randn(3, 128, 128), stage=3, query=(4, 4))
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    want = torch.exp(-((rows - 4) ** 2 + (cols - 4) ** 2) / 2)
    torch.testing.assert_close(maps[0], want / want.sum())


# every chapter: the stub, the library's own functions, the forbidden calls, no importable answers ---------


def test_the_reference_answers_are_not_importable_under_the_exercise_names():
    for name in ("masked_attention", "receptive_field", "clipped_bias", "bias_params", "flat_locality"):
        assert not hasattr(ex, name), name
    for exercises in ex.EXERCISES.values():
        for exercise in exercises:
            assert not hasattr(ex, exercise.function), exercise.function


def test_every_registered_exercise_has_its_check():
    checks = [e.check for exercises in ex.EXERCISES.values() for e in exercises]
    assert sorted(checks) == sorted(ex.CHECKS)


@pytest.mark.parametrize("name", sorted(ex.CHECKS))
def test_every_check_rejects_the_stub(name):
    def stub(*args):
        raise NotImplementedError

    fails(ex.CHECKS[name], stub, "raises NotImplementedError", "replace the stub")


@pytest.mark.parametrize(
    "check, library",
    [
        (ex.check_clipped_bias, lambda: ref.bias_with_clipping),
        (ex.check_resize_table, lambda: coatlib.attention.resize_table),
        (ex.check_window_partition, lambda: coatlib.models.swin.window_partition),
        (ex.check_masked_attention, lambda: F.scaled_dot_product_attention),
        (ex.check_flat_locality, lambda: ref.locality_of_flat_table),
    ],
)
def test_a_library_function_is_refused_by_name(check, library):
    fails(check, library(), "is the library's function, not yours")


def depthwise_conv_unfold(x, weight):
    """Stands for chapter 1's function of that name, which the exercise forbids."""
    return depthwise_conv(x, weight)


FORBIDDEN = [
    (ex.check_depthwise_conv, lambda x, w: F.conv2d(x, w, padding=w.shape[-1] // 2, groups=x.shape[1]), "conv2d"),
    (ex.check_depthwise_conv, lambda x, w: torch.nn.Conv2d(3, 3, 3, groups=3)(x), "conv2d"),
    (ex.check_depthwise_conv, lambda x, w: depthwise_conv_unfold(x, w), "the chapter's depthwise_conv_unfold"),
    (ex.check_depthwise_conv, depthwise_conv_with_unfold, "F.unfold"),
    (
        ex.check_mbconv_macs,
        lambda c, k, h, w: coatlib.count_macs(MBConv(c, c, kernel_size=k), torch.zeros(1, c, h, w)),
        "count_macs",
    ),
    (
        ex.check_masked_attention,
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        "F.scaled_dot_product_attention",
    ),
    (ex.check_patchify, lambda x, p: F.unfold(x, p, stride=p).transpose(1, 2), "F.unfold"),
    (
        ex.check_attention_macs,
        lambda n, d: coatlib.count_macs(coatlib.attention.MultiHeadAttention(d), torch.zeros(1, n, d)),
        "count_macs",
    ),
    (ex.check_relative_index, lambda H, W: coatlib.attention.relative_position_index(H, W), "relative_position_index"),
    (ex.check_window_partition, lambda x, w: coatlib.models.swin.window_partition(x, w), "window_partition"),
    (
        ex.check_bias_params,
        lambda c, s: sum(p.numel() for p in coatlib.models.coatnet.CoAtNet(c, image_size=s).parameters()),
        "building the model",
    ),
    (
        ex.check_transformer_params,
        lambda a, b, s, h: sum(p.numel() for p in coatlib.blocks.TransformerBlock(a, b, s, head_dim=h).parameters()),
        "building the block",
    ),
    (
        ex.check_resize_table,
        lambda t, s: coatlib.attention.resize_table(t, (2 * s[0] - 1, 2 * s[1] - 1)),
        "resize_table",
    ),
    (
        ex.check_flat_locality,
        lambda H, W, r: coatlib.inspection.bias_locality(torch.zeros(1, 2 * H - 1, 2 * W - 1), r).item(),
        "bias_locality",
    ),
    (
        ex.check_centre_gradient,
        lambda n, x: coatlib.inspection.effective_receptive_field(n, x),
        "effective_receptive_field",
    ),
    (ex.check_shift_mask, lambda h, w, win, s: coatlib.models.swin.shift_mask(h, w, win, (s, s)) != 0, "shift_mask"),
    (
        ex.check_channels_last_strides,
        lambda s: torch.empty(s).contiguous(memory_format=torch.channels_last).stride(),
        "Tensor.stride",
    ),
    (
        ex.check_shard_indices,
        lambda n, w, r: list(torch.utils.data.DistributedSampler(range(n), w, r, shuffle=False)),
        "DistributedSampler",
    ),
    (ex.check_fsdp_state_bytes, lambda n, g: 16 * n // g, None),
]


@pytest.mark.parametrize(
    "check, shortcut, call", [f for f in FORBIDDEN if f[2]], ids=lambda v: getattr(v, "__name__", "")
)
def test_a_forbidden_library_call_is_named(check, shortcut, call):
    fails(check, shortcut, "calls", call, "asks you not to use")


def test_a_forbidden_call_is_restored_after_the_check():
    conv2d, unfold = F.conv2d, F.unfold
    fails(ex.check_depthwise_conv, FORBIDDEN[0][1], "asks you not to use")
    assert F.conv2d is conv2d and F.unfold is unfold and torch.conv2d is conv2d


# hints for the commonest slips ---------------------------------------------------------------------------


def test_relative_index_off_by_one_and_swapped_axes():
    fails(ex.check_relative_index, lambda H, W: relative_index(H, W) + 1, "off by +1", "off-by-one")

    def swapped(H, W):
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        dy = ys.flatten()[:, None] - ys.flatten()[None, :]
        dx = xs.flatten()[:, None] - xs.flatten()[None, :]
        return (dx + W - 1) * (2 * H - 1) + (dy + H - 1)

    fails(ex.check_relative_index, swapped, "rows and columns are swapped")


def test_static_kernel_softmax_over_one_axis():
    fails(ex.check_static_kernel, lambda t, r, c: _kernel_logits(t, r, c).softmax(1), "normalises each row")
    fails(ex.check_static_kernel, lambda t, r, c: _kernel_logits(t, r, c).softmax(0), "normalises each column")


def _kernel_logits(table, row, col):
    H, W = (table.shape[0] + 1) // 2, (table.shape[1] + 1) // 2
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return table[row - ys + H - 1, col - xs + W - 1]


def test_counts_off_by_a_factor_say_so():
    fails(ex.check_attention_macs, lambda n, d: attention_macs(n, d) // 2, "0.5 times the expected one")
    fails(ex.check_fsdp_state_bytes, lambda n, g: 3 * fsdp_state_bytes(n, g), "3 times the expected one")


# chapter 5b -----------------------------------------------------------------------------------------------


def attended_key(table, query):
    """The largest entry's offset (dy, dx), subtracted from the query: key = query - offset."""
    H, W = (table.shape[0] + 1) // 2, (table.shape[1] + 1) // 2
    row, col = divmod(int(table.argmax()), table.shape[1])
    return query[0] - (row - (H - 1)), query[1] - (col - (W - 1))


def test_attended_key():
    passes(ex.check_attended_key, attended_key)
    fails(
        ex.check_attended_key,
        lambda t, q: (2 * q[0] - attended_key(t, q)[0], 2 * q[1] - attended_key(t, q)[1]),
        "not i + offset",
    )
    fails(ex.check_attended_key, lambda t, q: attended_key(t, q)[::-1], "rows and columns are swapped")
    fails(ex.check_attended_key, lambda t, q: divmod(int(t.argmax()), t.shape[1]), "that is the entry of the table")
    fails(ex.check_attended_key, lambda t, q: attended_key(t, q)[0], "return a pair")


def test_attended_key_reference_is_measured_on_a_layer():
    """The check's answer comes from a RelativeAttention layer: the formula above agrees with it."""
    from coatlib.teaching.exercises.ch5b_trained import _looked_at_by_a_layer

    table = torch.full((13, 13), -20.0)
    table[6 + 0, 6 + 1] = 5.0  # offset (0, 1): the key to the left of the query
    assert _looked_at_by_a_layer(table, (5, 4)) == (5, 3) == attended_key(table, (5, 4))


def test_a_function_that_calls_a_private_reference_answer_is_named():
    import importlib

    def receptive_field(kernel_sizes, strides):
        private = importlib.import_module("coatlib.teaching.exercises._solutions")
        return private.receptive_field_of(kernel_sizes, strides)

    fails(ex.check_receptive_field, receptive_field, "calls the book's reference answer")
    passes(ex.check_receptive_field, globals()["receptive_field"])  # restored after the check


def test_more_slips_get_their_hints():
    fails(ex.check_receptive_field, lambda ks, ss: receptive_field(ks, ss) - 1, "count the output pixel itself")

    def all_strides(ks, ss):
        total = 1
        for s in ss:
            total *= s
        return sum(k - 1 for k in ks) * total + 1

    fails(ex.check_receptive_field, all_strides, "the strides *before* it only")
    fails(ex.check_depthwise_conv, lambda x, w: depthwise_conv(x, w).roll((1, 1), (-2, -1)), "shifted by one pixel")

    def transposed_size(t, s):
        resized = F.interpolate(
            t.transpose(-2, -1)[None], size=(2 * s[1] - 1, 2 * s[0] - 1), mode="bilinear", align_corners=True
        )
        return resized[0].transpose(-2, -1)

    passes(ex.check_resize_table, transposed_size)  # interpolation is separable: another correct answer
    swapped_size = lambda t, s: resize_table(t, s[::-1])  # noqa: E731
    fails(ex.check_resize_table, swapped_size, "rows from H', columns from W'")

    def swapped(t, H, W):
        return clipped_bias(t.transpose(-2, -1), H, W)

    fails(ex.check_clipped_bias, swapped, "rows and columns are swapped")
