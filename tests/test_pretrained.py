"""timm's trained rw CoAtNets in coatlib: the same logits as timm, and pretrained=True / checkpoint_path=.

Nothing here downloads: timm's models are randomly initialised (randomised BatchNorm statistics,
large bias tables), and the Hugging Face Hub is replaced by a local file, or made unreachable.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch
from test_weights import randomize_

import coatlib
from coatlib import checkpoints
from coatlib.models import coatnet_rw_timm

# every rw model: the small ones at full size (14x14 and 7x7 attention maps), the large ones at 64 px
RW_MODELS = [
    ("coatnet_nano_rw", 224, 15_141_244),
    ("coatnet_0_rw", 224, 27_435_562),
    ("coatnet_bn_0_rw", 64, 27_435_562),
    ("coatnet_1_rw", 64, 41_721_502),
    ("coatnet_2_rw", 64, 73_868_400),
    ("coatnet_3_rw", 64, 181_805_305),  # with the 11821 classes of its ImageNet-12k weights
]


def rw_twins(timm, name: str, size: int):
    """A random timm rw model (with its pretrained head) and coatlib's model loaded from its state dict."""
    reference = randomize_(timm.create_model(f"{name}_224", img_size=size), size)
    model = coatlib.create_model(name, image_size=size, num_classes=reference.num_classes)
    return reference, coatlib.load_timm_weights(model, reference.state_dict()).eval()


def assert_same_logits(model, reference, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, size, params", RW_MODELS)
def test_rw_model_gives_timms_logits(timm, name, size, params):
    reference, model = rw_twins(timm, name, size)
    assert_same_logits(model, reference, size)


@pytest.mark.parametrize("name, size, params", RW_MODELS)
def test_rw_model_has_timms_parameter_count(timm, name, size, params):
    """At 224 px, timm's size (the bias tables grow with the image); on the meta device: no memory."""
    with torch.device("meta"):
        reference = timm.create_model(f"{name}_224")
        model = coatlib.create_model(name, num_classes=reference.num_classes)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(reference) == params


@pytest.mark.parametrize(
    "timm_name, coatlib_name, looks_like",
    [
        ("coatnet_bn_0_rw_224", "coatnet_0_rw", "coatnet_bn_0_rw_224"),  # the same sizes, other norms
        ("coatnet_0_rw_224", "coatnet_1_rw", "coatnet_0_rw_224"),  # other depths
        ("coatnet_0_224", "coatnet_0_rw", "coatnet_0_224"),  # timm's paper configuration
        ("coatnet_1_rw_224", "coatnet_1", "coatnet_1_rw_224"),
    ],
)
def test_other_variant_is_refused_naming_it(timm, timm_name, coatlib_name, looks_like):
    with torch.device("meta"):  # names and shapes only
        state = timm.create_model(timm_name).state_dict()
        model = coatlib.create_model(coatlib_name)
    with pytest.raises(ValueError, match=f"looks like timm's {looks_like}: load it into coatlib.create_model"):
        coatlib.load_timm_weights(model, state)


def test_weights_for_another_resolution_load_with_resized_tables(timm):
    reference = randomize_(timm.create_model("coatnet_nano_rw_224"), 224)
    model = coatlib.load_timm_weights(coatlib.create_model("coatnet_nano_rw", image_size=256), reference.state_dict())
    assert model.stages[3].blocks[0].attn.relative_bias_table.shape == (8, 15, 15)  # 8x8 map at 256 (7x7 at 224)
    assert model.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 1000)


# ---- create_model(name, pretrained=True) and checkpoint_path= -----------------------------------


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """huggingface_hub offline, with an empty cache: no test can reach the network."""
    hub = pytest.importorskip("huggingface_hub")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return hub


def test_pretrained_without_the_extra_fails_at_once_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now fails
    with pytest.raises(ImportError, match=r"pip install 'coatlib\[pretrained\]'.*checkpoint_path="):
        coatlib.create_model("coatnet_0_rw", pretrained=True)


def test_pretrained_offline_fails_at_once(no_hub):
    start = time.perf_counter()
    with pytest.raises(
        ConnectionError, match=r"needs the network.*coatlib\[pretrained\].*checkpoint_path='model.safetensors'"
    ):
        coatlib.create_model("coatnet_0_rw", pretrained=True)
    assert time.perf_counter() - start < 5


def test_pretrained_without_network_fails_at_once(no_hub, monkeypatch):
    """Not in offline mode, but the Hub's host cannot be reached: no half minute of retries."""
    monkeypatch.setattr(sys.modules["huggingface_hub.constants"], "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda endpoint: False)
    with pytest.raises(ConnectionError, match="could not download timm/coatnet_0_rw_224.sw_in1k"):
        coatlib.create_model("coatnet_0_rw", pretrained=True)


def test_pretrained_needs_weights_that_exist():
    with pytest.raises(ValueError, match="no pretrained weights for 'coatnet_0'.*coatnet_0_rw"):
        coatlib.create_model("coatnet_0", pretrained=True)


def test_pretrained_loads_timms_file_from_the_hub(timm, no_hub, monkeypatch, tmp_path):
    """The download replaced by a local model.safetensors: the whole pretrained=True path."""
    from safetensors.torch import save_file

    reference = randomize_(timm.create_model("coatnet_nano_rw_224"), 224)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    asked = []
    monkeypatch.setattr(no_hub, "hf_hub_download", lambda repo_id, filename, **kw: asked.append(repo_id) or path)
    model = coatlib.create_model("coatnet_nano_rw", pretrained=True).eval()
    assert asked == ["timm/coatnet_nano_rw_224.sw_in1k"]
    assert_same_logits(model, reference, 224)


def test_pretrained_coatnet_3_rw_has_the_imagenet_12k_head(timm, no_hub, monkeypatch):
    with torch.device("meta"):
        state = timm.create_model("coatnet_3_rw_224").state_dict()
        monkeypatch.setattr(coatnet_rw_timm, "pretrained_state_dict", lambda name: state)
        model = coatlib.create_model("coatnet_3_rw", pretrained=True)
    assert model.head.out_features == 11821


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_path_loads_timms_file(timm, tmp_path, suffix):
    reference = randomize_(timm.create_model("coatnet_0_rw_224", img_size=64), 64)
    path = tmp_path / f"coatnet_0_rw{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    model = coatlib.create_model("coatnet_0_rw", image_size=64, checkpoint_path=path).eval()
    assert_same_logits(model, reference, 64)


def test_checkpoint_path_loads_a_coatlib_state_dict(tmp_path):
    saved = coatlib.create_model("coatnet_nano_rw", image_size=64).eval()
    path = tmp_path / "mine.pth"
    torch.save(saved.state_dict(), path)
    model = coatlib.create_model("coatnet_nano_rw", image_size=64, checkpoint_path=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), saved(x))


def test_checkpoint_path_is_read_with_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"head.weight": torch.zeros(2), "payload": torch.nn.ReLU()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        coatlib.create_model("coatnet_nano_rw", checkpoint_path=path)
