"""coatlib.memory: the planner's activations against measured memory, its plans, advice and command line."""

import pytest
import torch

import coatlib
from coatlib.memory import activation_bytes, main, measure, plan
from coatlib.train import distribute


@pytest.mark.parametrize("name", ["coatnet_pico", "vit_ti_16"])
def test_activation_estimate_within_20_percent_of_measured_memory(name):
    images = torch.randn(8, 3, 64, 64)
    with torch.device("meta"):
        estimate = activation_bytes(coatlib.create_model(name, num_classes=10, image_size=64), images.to("meta"))
    torch.manual_seed(0)
    model = coatlib.create_model(name, num_classes=10, image_size=64)
    gradients = 4 * sum(p.numel() for p in model.parameters())
    after_forward, _ = measure(model, images)
    assert estimate.total == pytest.approx(after_forward, rel=0.2)
    distribute(model, torch.device("cpu"), world=1, fsdp=False, activation_checkpointing=True, dtype=None)
    _, peak = measure(model, images)
    assert estimate.checkpointed + gradients == pytest.approx(peak, rel=0.2)
    assert estimate.checkpointed < estimate.total


def test_plans_shard_the_state_and_checkpointing_shrinks_activations():
    plans = {(p.strategy, p.precision): p for p in plan("coatnet_pico", image_size=64, batch=4, gpus=4)}
    assert len(plans) == 6
    n = sum(p.numel() for p in coatlib.create_model("coatnet_pico", image_size=64).parameters())
    ddp, fsdp, ac = plans["DDP", "fp32"], plans["FSDP", "fp32"], plans["FSDP+AC", "fp32"]
    assert (ddp.params, ddp.grads, ddp.optimizer) == (4 * n, 4 * n, 8 * n)  # weights, gradients, AdamW
    assert fsdp.grads == 4 * -(-n // 4) and fsdp.optimizer == 8 * -(-n // 4)
    assert fsdp.activations == ddp.activations > ac.activations
    assert plans["DDP", "bf16"].activations < ddp.activations


def test_coatnet_7_needs_sharding_and_says_what_to_change(capsys):
    plans = {
        (p.strategy, p.precision): p
        for p in main(["coatnet_7", "--image-size", "512", "--batch", "4", "--gpus", "8", "--gpu-memory", "80"])
    }
    assert 2.4e9 < plans["DDP", "fp32"].params / 4 < 2.5e9
    assert not plans["DDP", "fp32"].fits and plans["FSDP+AC", "bf16"].fits
    assert "does not fit" not in capsys.readouterr().out
    main(["coatnet_7", "--image-size", "512", "--batch", "1", "--gpus", "1", "--gpu-memory", "24"])
    out = capsys.readouterr().out
    assert "coatnet_7 does not fit: the smallest plan, FSDP+AC in bf16, needs" in out
    assert "GiB more than the 21.6 GiB usable" in out and "at least 2 GPUs" in out


def test_bad_input():
    with pytest.raises(ValueError, match="unknown model 'coatnet_77'"):
        plan("coatnet_77")
    with pytest.raises(ValueError, match="gpus must be a positive int"):
        plan("coatnet_pico", gpus=0)
