"""coatlib.train at scale: FSDP on 2 CPU processes (gloo, started here by torchrun on loopback),
sharded checkpoints, resume, activation checkpointing, the blocks they work on, clear errors.

The 2-process runs live in ``fsdp_worker.py``; one torchrun launch serves all the tests
here that need it, and the single-process reference trains beside it.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import coatlib
from coatlib.data import load, load_splits
from coatlib.model_parts import blocks_of
from coatlib.train import distribute, fit, load_training_checkpoint, main

WORKER = Path(__file__).with_name("fsdp_worker.py")


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """The worker's results on 2 processes, and one process trained on the same global batches."""
    folder = tmp_path_factory.mktemp("fsdp")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(folder),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    train, test = load_splits("same_different", 32, 3, 64, 16)  # as the worker, 2 x 8 = 16 per step
    torch.manual_seed(0)
    single = coatlib.create_model("coatnet_pico_vitrel", num_classes=2, image_size=32)
    history = fit(single, train, test, epochs=2, batch_size=16, lr=3e-3, progress=False)

    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    results = torch.load(folder / "results.pt", weights_only=True)
    return folder, results, single.eval(), history


def test_fsdp_steps_equal_one_process_on_the_same_global_batch(fsdp_runs):
    _, results, single, history = fsdp_runs
    assert results["history"]["train_loss"] == pytest.approx(history["train_loss"], rel=1e-5)
    assert results["history"]["test_loss"] == pytest.approx(history["test_loss"], rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(results["logits"], single(results["images"]), rtol=1e-5, atol=1e-5)


def test_sharded_checkpoint_of_2_processes_loads_into_1(fsdp_runs):
    folder, results, _, _ = fsdp_runs
    assert sorted(p.name for p in folder.iterdir()) == ["crashed", "results.pt", "through"]  # no .tmp, no .old
    model = coatlib.create_model("coatnet_pico_vitrel", num_classes=2, image_size=32)
    state = load_training_checkpoint(folder / "through", model)
    assert state["epoch"] == 2 and state["schedule"]["world_size"] == 2
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(results["images"]), results["logits"], rtol=1e-6, atol=1e-6)


def test_resumed_fsdp_run_equals_running_through(fsdp_runs):
    _, results, _, _ = fsdp_runs
    assert results["crashed_epoch"] == 1  # the checkpoint it resumed from
    assert results["resumed_history"]["train_loss"] == results["history"]["train_loss"]
    assert results["resumed_history"]["test_acc"] == results["history"]["test_acc"]
    torch.testing.assert_close(results["resumed_logits"], results["logits"], rtol=0, atol=0)


def test_fsdp_with_activation_checkpointing_trains_the_same(fsdp_runs):
    _, results, _, _ = fsdp_runs
    assert results["checkpointed_history"]["train_loss"] == pytest.approx(results["history"]["train_loss"], rel=1e-6)


def test_fsdp_trains_coatnet_in_bfloat16(fsdp_runs):
    history = fsdp_runs[1]["bf16_history"]  # BatchNorm: float32 weights gathered, autocast computes
    assert history["epoch"] == [1, 2] and all(math.isfinite(v) for v in history["train_loss"] + history["test_loss"])


def test_checkpoint_folder_of_another_model_is_refused(fsdp_runs):
    folder = fsdp_runs[0]
    other = coatlib.create_model("coatnet_pico", num_classes=2, image_size=32)
    with pytest.raises(
        ValueError,
        match=r"written by a different model \(a CoAtNet with 303,734 parameters; "
        r"this one is a CoAtNet with 311,742 parameters\)",
    ):
        load_training_checkpoint(folder / "through", other)


def gradients(model, images, labels):
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["coatnet_pico", "vit_ti_16"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = coatlib.create_model(name, num_classes=3, image_size=32)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    plain = gradients(model, images, labels)
    saved = {"count": 0}

    def count(tensor):
        saved["count"] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        model(images)
    stored_without = saved["count"]
    distribute(model, torch.device("cpu"), world=1, fsdp=False, activation_checkpointing=True, dtype=None)
    recomputed = gradients(model, images, labels)
    assert recomputed.keys() == plain.keys()  # the parameter names stay
    for key in plain:
        torch.testing.assert_close(recomputed[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)
    saved["count"] = 0
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        model(images)
    assert saved["count"] < stored_without / 3  # it did keep fewer tensors for the backward pass


def test_blocks_of_finds_the_blocks_wherever_they_are():
    coatnet = coatlib.create_model("coatnet_pico", num_classes=3, image_size=32)
    blocks = blocks_of(coatnet)
    assert len(blocks) == 5 and {type(b).__name__ for b in blocks} == {"MBConv", "TransformerBlock"}
    convnext = coatlib.create_model("convnext_tiny", num_classes=3, image_size=32)
    assert len(blocks_of(convnext)) == 3 + 3 + 9 + 3  # stages.N.blocks.M
    nested = nn.Sequential()
    nested.blocks = nn.ModuleList([nn.Module() for _ in range(2)])
    nested.blocks[0].blocks = nn.Sequential(nn.Linear(2, 2))  # inside a block: part of it
    assert blocks_of(nested) == list(nested.blocks)
    assert blocks_of(nn.Sequential(nn.Linear(2, 2))) == []


def test_models_without_blocks_are_refused_for_fsdp_and_checkpointing():
    train = load("digits", "train", image_size=16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    with pytest.raises(ValueError, match="Sequential has no blocks to shard or checkpoint.*named `blocks`"):
        fit(model, train, None, epochs=1, activation_checkpointing=True, progress=False)


def test_fsdp_outside_torchrun_says_how_to_start_it(tmp_path):
    train = load("digits", "train", image_size=32)
    model = coatlib.create_model("coatnet_pico", num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="one process: start it with `torchrun --standalone --nproc_per_node=2"):
        fit(model, train, None, epochs=1, fsdp=True, progress=False)
    with pytest.raises(ValueError, match="--fsdp shards.*torchrun --standalone --nproc_per_node=N"):
        main(["--fsdp", "--out", str(tmp_path / "run")])
    assert not list(tmp_path.iterdir())


def test_precision_the_device_lacks_names_what_it_supports():
    train = load("digits", "train", image_size=32)
    model = coatlib.create_model("coatnet_pico", num_classes=10, image_size=32)
    with pytest.raises(ValueError, match=r"amp='bf16' is not supported by this device \(meta\), which supports None"):
        fit(model, train, None, epochs=1, amp="bf16", device="meta", progress=False)
    with pytest.raises(ValueError, match=r"got 'fp8'; this device \(cpu\) supports None, 'bf16'"):
        fit(model, train, None, epochs=1, amp="fp8", device="cpu", progress=False)


@pytest.mark.slow  # compiling takes about 40 s on 2 cores
def test_compile_trains_the_same_function():
    train = torch.utils.data.Subset(load("digits", "train", image_size=16), range(64))
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
        )
        runs.append(fit(model, train, None, epochs=1, batch_size=32, compile=compiled, progress=False))
    assert runs[1]["train_loss"] == pytest.approx(runs[0]["train_loss"], rel=1e-4)
