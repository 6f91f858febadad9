"""The CoAtNet family: paper parameter counts and MACs, layouts, sizes, devices and errors."""

import pytest
import torch

import coatlib
from coatlib.blocks import MBConv, TransformerBlock
from coatlib.flops import count_params
from coatlib.models.coatnet import CoAtNet, CoAtNetConfig


def meta_model(name, **kw):
    with torch.device("meta"):
        return coatlib.create_model(name, **kw)


def all_blocks(m):
    return [b for stage in m.stages for b in stage.blocks]


def kind(block):
    return {MBConv: "C", TransformerBlock: "T"}[type(block)]


# paper Table 3 / Table 14: parameter counts and the allowed relative difference
PAPER_PARAMS = [
    ("coatnet_0", 25e6, 0.01),
    ("coatnet_1", 42e6, 0.01),
    ("coatnet_2", 75e6, 0.01),
    ("coatnet_3", 168e6, 0.01),
    ("coatnet_4", 275e6, 0.01),
    ("coatnet_5", 688e6, 0.02),
    ("coatnet_6", 1.47e9, 0.10),  # the table's L/D give 1.35B, see the CoAtNet docstring
    ("coatnet_7", 2.44e9, 0.10),
]


@pytest.mark.parametrize("name,target,tol", PAPER_PARAMS)
def test_paper_parameter_counts(name, target, tol):
    n = count_params(meta_model(name))
    assert abs(n - target) / target < tol, f"{name}: {n / 1e6:.2f}M vs paper {target / 1e6:.0f}M"


def test_coatnet_0_to_5_match_timm_paper_configs_exactly():
    """REFERENCE.md section 2: timm's coatnet_N_224 builds the paper's configs."""
    timm = [25_036_820, 42_225_776, 74_684_744, 166_966_264, 275_425_288]
    assert [count_params(meta_model(f"coatnet_{i}")) for i in range(5)] == timm


PAPER_MACS = [  # (name, image size, paper GMACs)
    ("coatnet_0", 224, 4.2),
    ("coatnet_1", 224, 8.4),
    ("coatnet_2", 224, 15.7),
    ("coatnet_3", 224, 34.7),
    ("coatnet_0", 384, 13.4),
    ("coatnet_1", 384, 27.4),
    ("coatnet_2", 384, 49.8),
    ("coatnet_3", 384, 107.4),
    ("coatnet_4", 384, 189.5),
]


@pytest.mark.parametrize("name,size,gmacs", PAPER_MACS)
def test_paper_macs(name, size, gmacs):
    macs = coatlib.count_flops(meta_model(name, image_size=size), size) / 1e9
    assert abs(macs - gmacs) / gmacs < 0.10, f"{name}@{size}: {macs:.2f}G vs paper {gmacs}G"


@pytest.mark.parametrize("name,gmacs", [("coatnet_0", 4.6), ("coatnet_1", 8.8), ("coatnet_2", 16.6)])
def test_stride_2_depthwise_variant_macs_and_same_params(name, gmacs):
    dw = meta_model(name, downsample="dw")
    assert abs(coatlib.count_flops(dw, 224) / 1e9 - gmacs) / gmacs < 0.10
    assert count_params(dw) == count_params(meta_model(name))


def test_config_structure_coatnet_0():
    m = meta_model("coatnet_0")
    stages = {stage.name: list(stage.blocks) for stage in m.stages}
    assert [len(b) for b in stages.values()] == [2, 3, 5, 2]
    assert [kind(b) for b in stages["S1"] + stages["S2"]] == ["C"] * 5
    assert [kind(b) for b in stages["S3"] + stages["S4"]] == ["T"] * 7
    heads = [b.attn.num_heads for b in stages["S3"] + stages["S4"]]
    assert heads == [12] * 5 + [24] * 2  # head size 32: heads = D / 32


@pytest.mark.parametrize("name,head_dim", [("coatnet_5", 64), ("coatnet_6", 128), ("coatnet_7", 128)])
def test_large_models_head_size(name, head_dim):
    m = meta_model(name)
    assert {b.attn.head_dim for b in all_blocks(m) if kind(b) == "T"} == {head_dim}


@pytest.mark.parametrize("name,conv_width,tfm_width", [("coatnet_6", 768, 1536), ("coatnet_7", 1024, 2048)])
def test_split_s3(name, conv_width, tfm_width):
    s3 = list(meta_model(name).stages[2].blocks)
    assert [kind(b) for b in s3] == ["C"] * 8 + ["T"] * 42
    assert s3[0].project.out_channels == conv_width
    assert s3[8].attn.proj.out_features == tfm_width


def test_mbconv_expansion_and_se_widths():
    block = meta_model("coatnet_0").stages[1].blocks[0]  # first S2 block: 96 -> 192
    assert isinstance(block, MBConv)
    assert block.expand[0].out_channels == 4 * 192
    assert block.se.fc1.out_channels == 192 // 4


@pytest.mark.parametrize("name", [n for n in coatlib.list_models("coatnet_*") if "pico" in n or "nano" in n])
def test_small_models_forward_backward(name):
    size = 64 if "vitrel" not in name else 48
    torch.manual_seed(0)
    m = coatlib.create_model(name, num_classes=7, image_size=size)
    out = m(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("name", [f"coatnet_{i}" for i in range(8)])
def test_paper_models_forward_backward_on_meta(name):
    m = meta_model(name, num_classes=10)
    out = m(torch.randn(2, 3, 224, 224, device="meta"))
    assert out.shape == (2, 10)
    out.sum().backward()


def test_coatnet_0_runs_on_cpu_at_small_resolution():
    m = coatlib.create_model("coatnet_0", num_classes=5, image_size=64)
    out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("layout", ["C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T"])
def test_layouts_choose_block_types(layout):
    m = coatlib.create_model("coatnet_pico", layout=layout, image_size=64)
    kinds = [kind(stage.blocks[0]) for stage in m.stages]
    assert "-".join(kinds) == layout


def test_vit_rel_is_patch_stem_and_transformers():
    m = coatlib.create_model("coatnet_0", layout="ViT-Rel", image_size=224)
    assert isinstance(m.stem, torch.nn.Conv2d) and m.stem.stride == (16, 16)
    assert len(m.stages) == 1 and all(isinstance(b, TransformerBlock) for b in all_blocks(m))
    assert all_blocks(m)[0].attn.map_size == (14, 14)
    assert abs(count_params(m) - count_params(meta_model("coatnet_0"))) / 25e6 < 0.25  # similar size


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (128, 128)])
def test_any_multiple_of_32_square_or_not(size):
    m = coatlib.create_model("coatnet_pico", num_classes=3, image_size=size)
    assert m(torch.randn(1, 3, *size)).shape == (1, 3)
    assert all_blocks(m)[-1].attn.map_size == (size[0] // 32, size[1] // 32)


def test_checkpoint_at_224_loads_into_384_model():
    torch.manual_seed(0)
    small = coatlib.create_model("coatnet_pico", image_size=64)
    big = coatlib.create_model("coatnet_pico", image_size=128)
    big.load_state_dict(small.state_dict())
    table = all_blocks(big)[-1].attn.relative_bias_table
    assert table.shape[1:] == (2 * 4 - 1, 2 * 4 - 1)
    assert torch.isfinite(big(torch.randn(1, 3, 128, 128))).all()


def test_set_image_size_resizes_tables():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    m.set_image_size(96)
    assert all_blocks(m)[-1].attn.map_size == (3, 3)
    assert m(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_drop_path_off_by_default_and_active_when_asked():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    m = coatlib.create_model("coatnet_pico", image_size=64).train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    assert torch.allclose(a, m(x), atol=1e-6)  # no randomness in train mode by default
    m2 = coatlib.create_model("coatnet_pico", image_size=64, drop_path_rate=0.5).train()
    blocks = all_blocks(m2)
    assert [b.drop_path.p for b in blocks] == pytest.approx([0.5 * i / (len(blocks) - 1) for i in range(len(blocks))])
    torch.manual_seed(1)
    b = m2(x)
    torch.manual_seed(2)
    assert not torch.allclose(b, m2(x), atol=1e-3)  # stochastic depth draws other branches


def test_post_softmax_option_reaches_every_block():
    """Post-softmax weights are softmax + bias: their rows no longer sum to one, in every block."""
    torch.manual_seed(0)
    pre = coatlib.create_model("coatnet_pico", image_size=128)
    post = coatlib.create_model("coatnet_pico", image_size=128, softmax="post")
    post.load_state_dict(pre.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert not torch.allclose(pre(x), post(x), atol=1e-6)
        inputs = {}
        hooks = [
            b.attn.register_forward_pre_hook(lambda m, i: inputs.__setitem__(m, i[0]))
            for b in all_blocks(post)
            if kind(b) == "T"
        ]
        post(x)
        for h in hooks:
            h.remove()
        for attn, a in inputs.items():
            attn.relative_bias_table.normal_()
            rows = attn.attention_weights(a).sum(-1)
            assert (rows - 1).abs().max() > 1e-2
    assert len(inputs) == 3


def test_autocast_bf16_cpu_has_no_nan():
    torch.manual_seed(0)
    m = coatlib.create_model("coatnet_pico", num_classes=10, image_size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 3, 64, 64))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices)
def test_device_follows_the_input(device):
    m = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).to(device)
    out = m(torch.randn(2, 3, 64, 64, device=device))
    assert out.device.type == device
    out.sum().backward()


def test_torch_compile_equals_eager_with_real_attention_maps():
    """At 128 px coatnet_pico's S3 sees 8x8 maps and S4 4x4: the compiled graph computes real attention."""
    torch.manual_seed(0)
    m = coatlib.create_model("coatnet_pico", num_classes=4, image_size=128).eval()
    assert all_blocks(m)[-1].attn.map_size == (4, 4)
    x = torch.randn(2, 3, 128, 128)
    compiled = torch.compile(m)
    with torch.no_grad():
        assert torch.allclose(compiled(x), m(x), atol=1e-4)


# ---- bad input -------------------------------------------------------------------------------


def test_unknown_model_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'coatnet0'.*coatnet_0"):
        coatlib.create_model("coatnet0")


def test_wrong_channels():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, H, W\).*in_chans=1"):
        m(torch.randn(1, 1, 64, 64))


def test_in_chans_option():
    m = coatlib.create_model("coatnet_pico", image_size=64, in_chans=1)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 1000)


def test_wrong_image_size_names_expected_size_and_fix():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    with pytest.raises(ValueError, match=r"built for 64x64 images but got 96x96.*image_size=\(96, 96\)"):
        m(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("size", [100, (64, 48), 0])
def test_image_size_not_multiple_of_32(size):
    with pytest.raises(ValueError, match="multiples of 32"):
        coatlib.create_model("coatnet_pico", image_size=size)


@pytest.mark.parametrize(
    "layout,message",
    [
        ("C-T-C-T", "attention stage before a convolution stage"),
        ("C-C-T-C", "attention stage before a convolution stage"),
        ("T-T-T-T", "S1 is always MBConv"),
        ("C-C-X-T", "each C \\(MBConv\\) or T"),
        ("C-C-T", "four stage letters"),
        ("cctt", "four stage letters"),
    ],
)
def test_invalid_layouts(layout, message):
    with pytest.raises(ValueError, match=message):
        coatlib.create_model("coatnet_pico", layout=layout, image_size=64)


def test_head_size_that_does_not_divide_width():
    with pytest.raises(ValueError, match="head size 100 does not divide the width 384"):
        meta_model("coatnet_0", head_dim=100)


def test_bad_downsample_mode():
    with pytest.raises(ValueError, match="downsample must be"):
        CoAtNet(coatlib.models.coatnet.CONFIGS["coatnet_pico"], image_size=64, downsample="pool")


def test_channels_last_and_contiguous_input_give_the_same_logits():
    torch.manual_seed(0)
    m = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x.contiguous(memory_format=torch.channels_last)), atol=1e-6, rtol=0)


def test_bf16_autocast_is_within_its_precision_of_fp32():
    """bfloat16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4%): through coatnet_pico the
    logits stay within 5% of the logits' size of the fp32 ones, and the predicted classes agree."""
    torch.manual_seed(0)
    m = coatlib.create_model("coatnet_pico", num_classes=10, image_size=64).eval()
    with torch.no_grad():
        m.head.weight.mul_(50)  # logits of order 1, so that the comparison means something
        x = torch.randn(8, 3, 64, 64)
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x)
    assert low.dtype == torch.bfloat16
    scale = ref.abs().max()
    assert scale > 0.5 and (low.float() - ref).abs().max() < 0.05 * scale


def test_torch_export_gives_the_same_logits():
    torch.manual_seed(0)
    m = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(m, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), m(x), atol=1e-5, rtol=1e-5)


def test_torch_jit_script_fails_with_a_clear_message():
    m = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64)
    with pytest.raises(RuntimeError, match="torch.jit.script does not support.*torch.compile.*torch.export"):
        torch.jit.script(m)


def test_an_image_without_batch_dimension_says_so():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    with pytest.raises(ValueError, match=r"one image of shape \(3, 64, 64\).*x.unsqueeze\(0\)"):
        m(torch.randn(3, 64, 64))


def test_uint8_images_say_convert_and_normalise():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    with pytest.raises(TypeError, match=r"torch.uint8 tensor.*x.float\(\) / 255"):
        m(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize("size,nearest", [(230, "height 224 or 256, width 224 or 256"), ((64, 100), "width 96 or 128")])
def test_bad_size_names_the_nearest_valid_sizes(size, nearest):
    with pytest.raises(ValueError, match=nearest):
        coatlib.create_model("coatnet_pico", image_size=size)


def test_misspelled_keyword_names_the_close_valid_ones():
    with pytest.raises(TypeError, match=r"unknown keyword 'num_class'. Did you mean num_classes\?"):
        coatlib.create_model("coatnet_pico", num_class=10)
    with pytest.raises(TypeError, match=r"'drop_path'. Did you mean drop_path_rate\?"):
        coatlib.create_model("resnet18", drop_path=0.1)
    with pytest.raises(TypeError, match=r"'softmx'. Did you mean softmax\?"):
        coatlib.create_model("coatnet_pico", softmx="post")


def test_state_dict_of_another_model_lists_keys_by_stage():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    other = coatlib.create_model("coatnet_pico", image_size=64, layout="C-C-C-T").state_dict()
    with pytest.raises(RuntimeError) as info:
        m.load_state_dict(other)
    message = str(info.value)
    assert "does not fit CoAtNet 'coatnet_pico' with layout 'C-C-T-T'" in message
    assert "missing keys:\n  stages.2 (" in message and "unexpected keys:\n  stages.2 (" in message
    assert "stem" not in message.split("missing keys")[1]  # the stem and S1, S2, S4 match
    m.load_state_dict(other, strict=False)  # the matching keys load when asked


@pytest.mark.parametrize("name", ["coatnet_pico", "coatnet_nano_rw", "coatnet_pico_s3_conv"])
def test_state_dicts_from_before_the_named_shortcut_load(name):
    """Until issue 25 the shortcut Proj(Pool(x)) was an nn.Sequential: its conv was saved as
    ``shortcut.1`` after a pool and ``shortcut.0`` without one (the keys of commit 31c7219)."""
    old = {
        "coatnet_pico": ["stages.1.blocks.0.shortcut.1", "stages.2.blocks.0.shortcut.1", "stages.3.blocks.0.shortcut.1"],
        "coatnet_nano_rw": ["stages.1.blocks.0.shortcut.1", "stages.2.blocks.0.shortcut.1", "stages.3.blocks.0.shortcut.1"],
        "coatnet_pico_s3_conv": [
            "stages.1.blocks.0.shortcut.1", "stages.2.blocks.0.shortcut.1", "stages.2.blocks.1.shortcut.0",
            "stages.3.blocks.0.shortcut.1",
        ],
    }[name]  # fmt: skip

    def build(seed):
        torch.manual_seed(seed)
        if name == "coatnet_pico_s3_conv":  # S3 opens with an MBConv block, then widens at stride 1
            config = CoAtNetConfig(16, (1, 1, 2, 1), (16, 32, 64, 128), head_dim=16, s3_conv=(1, 48))
            return CoAtNet(config, num_classes=3, image_size=64).eval()
        return coatlib.create_model(name, num_classes=3, image_size=64).eval()

    source, target = build(0), build(1)
    projections = sorted({k.rsplit(".", 1)[0] for k in source.state_dict() if ".shortcut." in k})
    assert projections == sorted(key.rsplit(".", 1)[0] + ".proj" for key in old)
    renamed = {}
    for key, value in source.state_dict().items():
        block, _, param = key.partition(".shortcut.proj.")
        if param:  # the old name of this block's shortcut conv
            key = next(o for o in old if o.startswith(block + ".shortcut.")) + "." + param
        renamed[key] = value
    assert sorted(k.rsplit(".", 1)[0] for k in renamed if ".shortcut." in k) == sorted(old * 2)
    target.load_state_dict(renamed)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_set_image_size_follows_the_layout():
    """ViT-Rel cuts 16x16 patches: 80 x 80 is a valid size for it (not for a C-C-T-T model)."""
    vit = coatlib.create_model("coatnet_pico", layout="ViT-Rel", num_classes=3, image_size=64)
    vit.set_image_size(80)
    assert vit.stages[0].blocks[0].attn.map_size == (5, 5) and vit(torch.randn(1, 3, 80, 80)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiples of 32"):
        coatlib.create_model("coatnet_pico", image_size=64).set_image_size(80)


def test_a_refused_state_dict_names_an_unregistered_config():
    config = CoAtNetConfig(16, (1, 1, 1, 1), (16, 32, 64, 128), head_dim=16)
    with pytest.raises(RuntimeError, match=r"CoAtNet CoAtNetConfig\(stem=16.* with layout 'C-C-T-T'"):
        CoAtNet(config, image_size=64).load_state_dict({})


def test_a_refused_state_dict_lists_three_keys_per_stage():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    state = m.state_dict()
    dropped = ["stem.0.0.weight"] + [k for k in state if k.startswith("stages.1.")][:4]
    with pytest.raises(RuntimeError) as info:
        m.load_state_dict({k: v for k, v in state.items() if k not in dropped})
    first, *rest = dropped
    assert (
        f"5 missing keys:\n  stem (1): {first}\n  stages.1 (4): {', '.join(rest[:3])}, ...\nis it from another model"
        in str(info.value)
    )


def test_set_image_size_to_a_non_square_size():
    m = coatlib.create_model("coatnet_pico", num_classes=3, image_size=64)
    m.set_image_size((64, 128))  # S3 sees 4 x 8, S4 2 x 4
    assert [b.attn.map_size for s in m.stages[2:] for b in s.blocks] == [(4, 8), (4, 8), (2, 4)]
    assert m(torch.randn(1, 3, 64, 128)).shape == (1, 3)


def test_se_act_reaches_every_mbconv():
    m = meta_model("coatnet_pico", se_act="silu")
    acts = [type(b.se.act) for b in all_blocks(m) if isinstance(b, MBConv)]
    assert acts and set(acts) == {torch.nn.SiLU} and isinstance(all_blocks(m)[0].expand[2], torch.nn.GELU)


def test_loading_a_state_dict_keeps_the_parameters_an_optimizer_holds():
    m = coatlib.create_model("coatnet_pico", image_size=64)
    before = list(m.parameters())
    m.load_state_dict(coatlib.create_model("coatnet_pico", image_size=64).state_dict())
    assert all(a is b for a, b in zip(before, m.parameters()))
