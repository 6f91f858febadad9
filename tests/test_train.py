"""coatlib.train: learning, reproducibility, checkpoints and resume, clear errors, CLI, torchrun."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from fsdp_worker import CrashAfter, Interrupted  # the same crash, shared with the FSDP runs
from torch.utils.data import Subset

import coatlib
from coatlib.data import load
from coatlib.train import HISTORY_KEYS, evaluate, fit, main, warmup_cosine
from coatlib.viz import plot_history

FAST = dict(progress=False, batch_size=64, lr=3e-3)


def tiny_cnn(num_classes=10, width=8, seed=0):
    """A small CNN with BatchNorm (buffers in the checkpoint) for 16x16 digits."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1),
        nn.BatchNorm2d(width),
        nn.GELU(),
        nn.Conv2d(width, width, 3, 2, 1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def without_timing(history):
    return {k: v for k, v in history.items() if k not in ("time", "images_per_s")}


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_coatnet_pico_learns_textures():
    train, test = load("textures", "train"), load("textures", "test")
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", num_classes=6, image_size=32)
    history = fit(model, train, test, epochs=1, progress=False, batch_size=32, lr=3e-3, warmup_epochs=0.3)
    assert set(history) == set(HISTORY_KEYS) and history["epoch"] == [1]
    assert history["test_acc"][-1] > 0.4  # chance is 1/6; 0.68 here
    assert history["lr"][-1] < 1e-6  # the cosine ends at 0
    loss, acc = evaluate(model, test)
    assert acc == pytest.approx(history["test_acc"][-1]) and loss == pytest.approx(history["test_loss"][-1])


def test_same_seed_same_history(digits16):
    runs = [
        fit(tiny_cnn(), *digits16, epochs=2, seed=s, **{**FAST, "progress": p}) for s, p in ((0, 0), (0, 1), (1, 0))
    ]
    assert without_timing(runs[0]) == without_timing(runs[1])  # showing the progress bar changes nothing
    assert runs[0]["train_loss"] != runs[2]["train_loss"]  # the seed changes data order and augmentation


def test_resumed_run_equals_uninterrupted_run(digits16, tmp_path):
    train, test = digits16
    settings = dict(epochs=3)
    model_a = tiny_cnn()
    history_a = fit(model_a, train, test, checkpoint=tmp_path / "a.pt", **settings, **FAST)

    with pytest.raises(Interrupted):  # crash in the middle of epoch 2
        fit(
            tiny_cnn(),
            CrashAfter(train, 1 + len(train) * 3 // 2),
            test,
            checkpoint=tmp_path / "b.pt",
            **settings,
            **FAST,
        )
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["epoch"] == 1 and not (tmp_path / "b.pt.tmp").exists()

    model_c = tiny_cnn(seed=123)  # other initial weights: resuming replaces them
    history_c = fit(model_c, train, test, checkpoint=tmp_path / "b.pt", resume=True, **settings, **FAST)
    assert without_timing(history_c) == without_timing(history_a)
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, c), name


def test_checkpoint_holds_the_training_state(digits16, tmp_path):
    fit(tiny_cnn(), *digits16, epochs=1, checkpoint=tmp_path / "run" / "ck.pt", **FAST)
    state = torch.load(tmp_path / "run" / "ck.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "history", "schedule", "rng"} <= set(state)
    assert "1.running_mean" in state["model"] and state["epoch"] == 1
    assert os.listdir(tmp_path / "run") == ["ck.pt"]


def test_checkpoint_of_another_model_is_refused_and_kept(digits16, tmp_path):
    path = tmp_path / "ck.pt"
    fit(tiny_cnn(width=8), *digits16, epochs=1, checkpoint=path, **FAST)
    before = digest(path)
    with pytest.raises(ValueError, match="written by a different model.*0.weight: \\(8, 3, 3, 3\\) in the checkpoint"):
        fit(tiny_cnn(width=16), *digits16, epochs=1, checkpoint=path, resume=True, **FAST)
    with pytest.raises(ValueError, match="schedule"):
        fit(tiny_cnn(width=8), *digits16, epochs=4, checkpoint=path, resume=True, **FAST)
    with pytest.raises(ValueError, match="already exists: pass resume=True"):
        fit(tiny_cnn(width=8), *digits16, epochs=1, checkpoint=path, **FAST)
    assert digest(path) == before


@pytest.mark.parametrize(
    "make_model, data_kwargs, fit_kwargs, match",
    [
        (lambda: tiny_cnn(), {"image_size": 16}, {"batch_size": 2000}, "1437 images, fewer than one batch of 2000"),
        (
            lambda: coatlib.create_model("coatnet_pico", num_classes=10, image_size=64),
            {"image_size": 32},
            {},
            "cannot take the training images.*built for 64x64 images but got 32x32",
        ),
        (
            lambda: coatlib.create_model("coatnet_pico", num_classes=10, image_size=32, in_chans=1),
            {"image_size": 32},
            {},
            "cannot take the training images.*in_chans=3",
        ),
        (lambda: tiny_cnn(num_classes=7), {"image_size": 16}, {}, "data needs 10 \\(one per class\\) logits"),
        (lambda: tiny_cnn(), {"image_size": 16}, {"amp": "fp16", "device": "cpu"}, "fp16.*needs a CUDA device"),
        (lambda: tiny_cnn(), {"image_size": 16}, {"amp": "fp8"}, "amp must be"),
        (lambda: tiny_cnn(), {"image_size": 16}, {"sync_bn": True, "device": "cpu"}, "sync_bn=True needs CUDA"),
        (lambda: tiny_cnn(), {"image_size": 16}, {"resume": True}, "no checkpoint file"),
    ],
)
def test_bad_input_raises_before_writing(tmp_path, make_model, data_kwargs, fit_kwargs, match):
    train = load("digits", "train", **data_kwargs)
    path = tmp_path / "ck.pt"
    with pytest.raises(ValueError, match=match):
        fit(make_model(), train, None, epochs=1, checkpoint=path, **{"progress": False, **fit_kwargs})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_bf16_autocast_on_cpu(digits16):
    """bfloat16 autocast trains the same model to about the same loss as float32 (same seed)."""
    torch.manual_seed(0)
    low = fit(tiny_cnn(), *digits16, epochs=1, amp="bf16", channels_last=True, **FAST)
    torch.manual_seed(0)
    full = fit(tiny_cnn(), *digits16, epochs=1, channels_last=True, **FAST)
    assert low["train_loss"][0] != full["train_loss"][0]  # autocast did run in bfloat16
    assert abs(low["train_loss"][0] - full["train_loss"][0]) < 0.05 * full["train_loss"][0]
    n_test = len(digits16[1])
    assert abs(low["test_acc"][0] * n_test - round(low["test_acc"][0] * n_test)) < 1e-6  # a count of images


def test_warmup_cosine_schedule():
    factors = [warmup_cosine(s, 10, 110) for s in range(110)]
    assert factors[:10] == sorted(factors[:10]) and factors[0] < 0.1  # linear warm-up
    assert factors[10] == 1.0 and factors[60] == pytest.approx(0.5)  # peak, then half-way down the cosine
    assert factors[10:] == sorted(factors[10:], reverse=True) and factors[-1] < 1e-3


def test_plot_history_labels_its_axes(digits16):
    import matplotlib

    matplotlib.use("Agg")
    history = fit(tiny_cnn(), *digits16, epochs=2, **FAST)
    fig = plot_history(history)
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert labels == [("epoch", "cross-entropy loss"), ("epoch", "accuracy")]
    assert all(len(ax.lines) == 2 for ax in fig.axes)  # train and test


def test_cli_writes_history_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "--model",
        "coatnet_pico",
        "--data",
        "same_different",
        "--data-size",
        "64",
        "--test-size",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    history = main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("epoch 1/2: train loss")
    assert re.fullmatch(r"final test accuracy: \d\.\d{4}", lines[-1])
    assert float(lines[-1].split()[-1]) == pytest.approx(history["test_acc"][-1], abs=1e-4)
    record = json.loads((out / "history.json").read_text())
    assert record["command"].startswith("python -m coatlib.train --model coatnet_pico")
    assert record["history"]["test_acc"] == history["test_acc"] and "torch" in record["versions"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(ValueError, match="holds an earlier run.*pass --resume to continue it, --force to replace it"):
        main(args)
    main([*args[:-4], "--epochs", "2", "--out", str(out), "--resume", "--quiet"])  # nothing left to do
    assert capsys.readouterr().out.strip().splitlines() == [lines[-1]]


def _launch(out, nproc, batch_size):
    """Start training ViT-Rel pico on 64 generated images for 3 epochs, in ``nproc`` processes.

    ViT-Rel has LayerNorm only, no BatchNorm: every image's computation is then
    independent of the batch, so 2 processes with batch B and 1 process with
    batch 2B compute the same gradients (SyncBatchNorm, the cure for
    BatchNorm, needs CUDA).
    """
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    cmd = [
        sys.executable,
        *launcher,
        "-m",
        "coatlib.train",
        "--model",
        "coatnet_pico_vitrel",
        "--data",
        "same_different",
        "--data-size",
        "64",
        "--test-size",
        "64",
        "--epochs",
        "3",
        "--batch-size",
        str(batch_size),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finished(process, out, nproc):
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert re.search(r"final test accuracy: \d\.\d{4}\s*$", stdout)
    record = json.loads((out / "history.json").read_text())
    assert record["world_size"] == nproc
    return record["history"]


def test_torchrun_two_processes_match_one_process_with_double_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [_launch(one, 1, batch_size=16), _launch(two, 2, batch_size=8)]  # side by side
    h1, h2 = _finished(runs[0], one, 1), _finished(runs[1], two, 2)
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    assert h2["train_acc"] == h1["train_acc"]
    assert h2["test_loss"] == pytest.approx(h1["test_loss"], rel=1e-5)
    assert h2["train_loss"][-1] < h2["train_loss"][0]  # and it trains
    rng = torch.load(two / "checkpoint.pt", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["cpu"], rng[1]["cpu"])  # each process's own generator


def test_position_parameters_are_not_weight_decayed():
    from coatlib.model_parts import param_groups

    model = coatlib.create_model("coatnet_pico", num_classes=3, image_size=32)
    decay, no_decay = param_groups(model, 0.05)
    tables = [p for n, p in model.named_parameters() if n.endswith("relative_bias_table")]
    assert tables and all(any(t is q for q in no_decay["params"]) for t in tables)
    assert not any(t is q for t in tables for q in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def _one_step(table_lr_scale, data):
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", num_classes=10, image_size=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, data, None, 1, batch_size=len(data), progress=False, table_lr_scale=table_lr_scale)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_table_lr_scale_is_an_exact_multiplier_on_the_tables_only():
    """One AdamW step from the same weights on the same batch: with table_lr_scale=10 the tables move
    exactly 10 times as far as with 1, and every other parameter moves exactly as far."""
    data = Subset(load("digits", "train", image_size=64), range(8))
    one, ten = _one_step(1.0, data), _one_step(10.0, data)
    tables = [n for n in one if n.endswith("relative_bias_table")]
    assert len(tables) == 3  # S3's two blocks (4x4 maps) and S4's one (2x2)
    for name in one:
        if name in tables:
            assert one[name].abs().min() > 0  # AdamW's first step moves every entry, by about lr
            torch.testing.assert_close(ten[name], 10 * one[name], rtol=1e-4, atol=0)
        else:
            assert torch.equal(ten[name], one[name]), name


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), "10", True])
def test_table_lr_scale_must_be_positive_and_finite(scale):
    data = Subset(load("digits", "train", image_size=32), range(8))
    model = coatlib.create_model("coatnet_pico", num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="table_lr_scale must be a positive finite number"):
        fit(model, data, None, 1, batch_size=8, progress=False, table_lr_scale=scale)


def test_table_lr_scale_needs_tables(tmp_path):
    data = Subset(load("digits", "train", image_size=16), range(8))
    with pytest.raises(ValueError, match="has no trainable relative-bias tables"):
        fit(tiny_cnn(), data, None, 1, batch_size=8, progress=False, table_lr_scale=10.0)
    # the command line passes it through, and a checkpoint records it in its schedule
    args = ["--data", "same_different", "--data-size", "32", "--test-size", "16", "--image-size", "32"]
    main(args + ["--epochs", "1", "--batch-size", "16", "--quiet", "--out", str(tmp_path), "--table-lr-scale", "5"])
    schedule = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["schedule"]
    assert schedule["table_lr_scale"] == 5.0
    assert json.loads((tmp_path / "history.json").read_text())["args"]["table_lr_scale"] == 5.0
