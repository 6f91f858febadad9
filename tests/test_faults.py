"""Fault cases of issue 23: each bad input gives a clear error that names the fix, before anything is written,
and nothing is lost (checkpoints, histories, results). One test (or one parametrised case) per fault."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset

import coatlib
import coatlib.train as train
import coatlib.train.command as train_command
from coatlib.data import load
from coatlib.train import NonFiniteLoss, fit, load_training_checkpoint, main, save_sharded_checkpoint

FAST = dict(progress=False, batch_size=64, lr=3e-3)
# A run of the command line on 64 generated images: seconds.
CLI = ["--model", "coatnet_pico", "--data", "same_different", "--data-size", "64", "--test-size", "32"]
CLI += ["--batch-size", "16", "--epochs", "1", "--quiet"]


def tiny_cnn(num_classes=10, width=8, seed=0, in_chans=3):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, 2, 1),
        nn.BatchNorm2d(width),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def snapshot(folder):
    """Every file under ``folder`` with its size, modification time and digest: equal when nothing changed."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- 1. hyperparameters, checked before anything is written ------------------------------------------------


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("clip_grad", -1.0, r"clip_grad \(--clip-grad\) must be None \(no clipping\) or a finite number > 0"),
        ("clip_grad", 0.0, r"clip_grad .* must be None \(no clipping\)"),
        ("weight_decay", -0.05, r"weight_decay \(--weight-decay\) must be a finite number >= 0"),
        ("warmup_epochs", -3, r"warmup_epochs \(--warmup-epochs\) must be a finite number of epochs >= 0"),
        ("lr", 0.0, r"lr \(--lr\) must be a finite number > 0"),
        ("lr", float("nan"), r"lr \(--lr\) must be a finite number > 0"),
        ("label_smoothing", 1.5, r"label_smoothing \(--label-smoothing\) must be a number in \[0, 1\)"),
        ("label_smoothing", 1.0, r"must be a number in \[0, 1\)"),
        ("epochs", 0, r"epochs \(--epochs\) must be a positive int"),
        ("batch_size", 0, r"batch_size \(--batch-size\) must be a positive int"),
        ("num_workers", -1, r"num_workers \(--num-workers\) must be an int >= 0"),
        ("seed", 0.5, r"seed \(--seed\) must be an int"),
    ],
)
def test_fit_refuses_a_hyperparameter_out_of_range_before_writing(digits16, tmp_path, option, value, match):
    """clip_grad=-1 once reversed the gradients (loss 2.59 -> 6.13, no warning), weight_decay < 0 and
    warmup_epochs=-3 were accepted; label_smoothing=1.5 died at the first step with a raw error."""
    options = {**FAST, "epochs": 1, option: value}
    with pytest.raises(ValueError, match=match):
        fit(tiny_cnn(), *digits16, checkpoint=tmp_path / "run" / "ck.pt", **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--clip-grad", "-1"], r"--clip-grad must be a finite number >= 0 \(0: no clipping\), got -1"),
        (["--weight-decay", "-1"], r"--weight-decay\) must be a finite number >= 0"),
        (["--warmup-epochs", "-3"], r"--warmup-epochs\) must be"),
        (["--label-smoothing", "1.5"], r"--label-smoothing\) must be a number in \[0, 1\)"),
        (["--drop-path", "1.5"], r"--drop-path must be in \[0, 1\)"),
        (["--lr", "inf"], r"--lr\) must be a finite number > 0"),
        (["--num-workers", "-2"], r"--num-workers\) must be an int >= 0"),
        (["--data-size", "0"], r"--data-size must be a positive int"),
        (["--resume", "--force"], r"pass one of them"),
    ],
)
def test_cli_refuses_bad_arguments_before_building_anything(tmp_path, monkeypatch, flags, match):
    monkeypatch.setattr(coatlib.data, "load_splits", pytest.fail)  # the check comes before the data
    with pytest.raises(ValueError, match=match):
        main([*CLI, "--out", str(tmp_path / "run"), *flags])
    assert list(tmp_path.iterdir()) == []


def test_drop_path_rate_out_of_range_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\).*got 1.5"):
        coatlib.create_model("coatnet_pico", num_classes=2, image_size=32, drop_path_rate=1.5)


# --- --out: writable, and never an earlier run's (unless --resume or --force) ------------------------------


def test_unwritable_out_fails_before_the_first_epoch(tmp_path, monkeypatch):
    """An --out that cannot be written once failed after a full epoch. (A path under a file: unwritable even
    for root, which os.access lets write anywhere.)"""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(coatlib.data, "load_splits", pytest.fail)
    with pytest.raises(ValueError, match=r"--out .*run cannot be written: .*file is a file, not a folder.*another"):
        main([*CLI, "--out", str(blocker / "run")])
    with pytest.raises(ValueError, match="the checkpoint's folder .* cannot be written"):
        fit(tiny_cnn(), Subset(load("digits", "train", image_size=16), range(64)), checkpoint=blocker / "ck.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["file"] and blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_out_fails_before_the_first_epoch(tmp_path, monkeypatch):
    tmp_path.chmod(0o500)
    monkeypatch.setattr(coatlib.data, "load_splits", pytest.fail)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            main([*CLI, "--out", str(tmp_path / "run")])
    finally:
        tmp_path.chmod(0o700)


def test_out_with_an_earlier_history_is_refused_then_replaced_with_force(tmp_path):
    """train --out DIR once overwrote a history.json left without a checkpoint."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.json").write_text('{"earlier": true}')
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds an earlier run \(history.json\): pass --resume .* --force"):
        main([*CLI, "--out", str(out)])
    assert snapshot(out) == before
    main([*CLI, "--out", str(out), "--force"])
    assert json.loads((out / "history.json").read_text())["args"]["force"] is True
    assert (out / "notes.txt").read_text() == "mine"  # --force removes only what a run writes


# --- test data like the training data -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "test_split, match",
    [
        (lambda: load("digits", "test", image_size=32), r"test images are 3x32x32 .* training images 3x16x16"),
        (lambda: load("digits", "test", image_size=16, channels=1), r"test images are 1x16x16.*same image_size"),
        (
            lambda: load("same_different", "test", image_size=16, size=32),
            r"test data's classes .* are not the training data's .*another task",
        ),
    ],
)
def test_test_data_of_another_size_channels_or_task_is_refused_before_training(digits16, tmp_path, test_split, match):
    """A test set of another size once failed after the first epoch; one of another task was evaluated silently
    (a digits model tested on same_different: 'test acc 0.25')."""
    with pytest.raises(ValueError, match=match):
        fit(tiny_cnn(), digits16[0], test_split(), epochs=1, checkpoint=tmp_path / "ck.pt", **FAST)
    assert list(tmp_path.iterdir()) == []


# --- a non-finite loss stops training; the last good checkpoint stays ---------------------------------------


def test_lr_1e6_stops_at_the_first_nan_loss_and_writes_no_checkpoint(tmp_path):
    """--lr 1e6 once trained on with NaN losses and wrote NaN checkpoints."""
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 2 .*lower learning rate \(--lr.*--amp none"):
        main([*CLI, "--epochs", "2", "--lr", "1e6", "--out", str(tmp_path / "run")])
    assert list(tmp_path.iterdir()) == []


def test_a_nan_loss_in_epoch_2_keeps_the_checkpoint_of_epoch_1(digits16, tmp_path):
    model, path = tiny_cnn(), tmp_path / "ck.pt"
    steps = []

    def poison_in_epoch_2(loss):  # after step 10 of 16, the weights become NaN: step 11's loss is NaN
        steps.append(loss)
        if len(steps) == 10:
            with torch.no_grad():
                model[-1].weight.fill_(float("nan"))
            shutil.copy(path, tmp_path / "epoch1.pt")

    with pytest.raises(NonFiniteLoss, match=r"the training loss is nan at step 11 "):
        fit(model, *digits16, epochs=2, checkpoint=path, on_step=poison_in_epoch_2, **FAST)
    assert (tmp_path / "epoch1.pt").read_bytes() == path.read_bytes()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "epoch1.pt"]


# --- resume: the whole run configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        ({"seed": 1}, r"seed: 0 in the checkpoint, 1 now"),
        ({"weight_decay": 0.1}, r"weight_decay: 0.05 in the checkpoint, 0.1 now"),
        ({"label_smoothing": 0.0}, r"label_smoothing: 0.1 in the checkpoint, 0.0 now"),
        ({"clip_grad": None}, r"clip_grad: 1.0 in the checkpoint, None now"),
        ({"amp": "bf16"}, r"amp: None in the checkpoint, 'bf16' now"),
        (
            {"warmup_epochs": 0.5},
            r"warmup_steps: 8 in the checkpoint, 4 now; warmup_epochs: 1.0 in the checkpoint, 0.5 now",
        ),
        ({"train": range(512, 1024)}, r"train_data: .*'subset': '\w+'\} in the checkpoint, .*'subset'"),
        ({"epochs": 4}, r"epochs: 2 in the checkpoint, 4 now"),
    ],
)
def test_resume_with_any_other_setting_is_refused_naming_it(digits16, tmp_path, change, match):
    """--resume once compared only the schedule: another seed or another subset of the same size ran silently."""
    path, train_all = tmp_path / "ck.pt", digits16[0].dataset
    settings = {**FAST, "epochs": 2, "seed": 0, "weight_decay": 0.05, "label_smoothing": 0.1, "clip_grad": 1.0}
    fit(tiny_cnn(), digits16[0], digits16[1], checkpoint=path, **{**settings, "epochs": 1})  # an interrupted run
    state = torch.load(path, weights_only=True)
    state["schedule"]["epochs"] = 2  # as if it had been started for 2 epochs and stopped after the first
    torch.save(state, path)
    before = snapshot(tmp_path)
    train = Subset(train_all, change.pop("train")) if "train" in change else digits16[0]
    with pytest.raises(ValueError, match="written with other settings than this run's .*" + match):
        fit(tiny_cnn(), train, digits16[1], checkpoint=path, resume=True, **{**settings, **change})
    assert snapshot(tmp_path) == before


def test_cli_resume_refuses_other_data_options_and_history_says_where_it_resumed(tmp_path, monkeypatch):
    out, steps = tmp_path / "run", []

    def interrupt_in_epoch_2(loss):  # 4 steps per epoch
        steps.append(loss)
        if len(steps) == 5:
            raise KeyboardInterrupt

    real_fit = train.fit
    with monkeypatch.context() as patch:
        patch.setattr(
            train_command, "fit", lambda *args, **kwargs: real_fit(*args, **kwargs, on_step=interrupt_in_epoch_2)
        )
        with pytest.raises(KeyboardInterrupt):
            main([*CLI, "--out", str(out), "--epochs", "2"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    main([*CLI, "--out", str(out), "--epochs", "2", "--resume"])
    record = json.loads((out / "history.json").read_text())
    assert record["resumed_from_epoch"] == 1 and record["history"]["epoch"] == [1, 2]
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"data_size: 64 in the checkpoint, 48 now"):
        main([*CLI, "--out", str(out), "--epochs", "2", "--data-size", "48", "--resume"])
    with pytest.raises(ValueError, match=r"drop_path: None in the checkpoint, 0.1 now"):
        main([*CLI, "--out", str(out), "--epochs", "2", "--drop-path", "0.1", "--resume"])
    assert snapshot(out) == before


# --- sharded checkpoints: every crash point of save_sharded_checkpoint -------------------------------------


def sharded_run(folder, epochs):
    """A sharded checkpoint folder per epoch, written in one process, as fit(fsdp=True) writes them."""
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico_vitrel", num_classes=2, image_size=32)
    optimizer = torch.optim.AdamW(model.parameters())
    for epoch in epochs:
        save_sharded_checkpoint({"epoch": epoch, "schedule": {}}, folder / f"epoch{epoch}", model, optimizer)
    return model


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    with warnings.catch_warnings():  # one process writing alone is the intent
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        sharded_run(folder, (1, 2))
    return folder


def crash_state(two_epochs, tmp_path, state):
    """Lay out on disk what a kill at one point of the save of epoch 2 leaves (epoch 1 saved before)."""
    path, tmp, old = tmp_path / "checkpoint", tmp_path / "checkpoint.tmp", tmp_path / "checkpoint.old"
    epoch1, epoch2 = two_epochs / "epoch1", two_epochs / "epoch2"
    partial = lambda target: shutil.copytree(epoch2, target, ignore=shutil.ignore_patterns(train.SHARDED_STATE))  # noqa: E731
    if state == "writing .tmp":  # killed while the processes write their shards
        shutil.copytree(epoch1, path)
        partial(tmp)
    elif state == ".tmp complete":  # killed before PATH -> PATH.old
        shutil.copytree(epoch1, path)
        shutil.copytree(epoch2, tmp)
    elif state == "between the renames":  # killed after PATH -> PATH.old, before PATH.tmp -> PATH
        shutil.copytree(epoch1, old)
        shutil.copytree(epoch2, tmp)
    elif state == ".old not yet removed":  # killed after PATH.tmp -> PATH
        shutil.copytree(epoch1, old)
        shutil.copytree(epoch2, path)
    elif state == "only .old":  # the .tmp of 'between the renames' lost (e.g. removed by hand)
        shutil.copytree(epoch1, old)
    elif state == "first save, writing .tmp":
        partial(tmp)
    return path


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize(
    "state, epoch",
    [
        ("writing .tmp", 1),
        (".tmp complete", 1),
        ("between the renames", 2),
        (".old not yet removed", 2),
        ("only .old", 1),
        ("first save, writing .tmp", None),
    ],
)
def test_sharded_checkpoint_survives_every_crash_point(two_epochs, digits16, tmp_path, state, epoch):
    """Killed between renaming PATH to .old and .tmp to PATH, --resume once said "no checkpoint" and a new
    run's first save deleted both copies. Now a load finds a complete copy; a fresh run refuses to start; and
    the next save (of the resumed run) leaves exactly one complete checkpoint."""
    path = crash_state(two_epochs, tmp_path, state)
    torch.manual_seed(1)
    model = coatlib.create_model("coatnet_pico_vitrel", num_classes=2, image_size=32)
    if epoch is None:
        with pytest.raises(ValueError, match="no checkpoint file"):
            load_training_checkpoint(path, model)
    else:
        assert load_training_checkpoint(path, model)["epoch"] == epoch
    if path.exists():
        refusal = r"already exists: pass resume=True \(--resume\)"
    elif epoch is not None:
        refusal = r"left by a sharded save that was killed part-way: pass resume=True \(--resume\) .*, or delete"
    else:
        refusal = r"left by a sharded save that was killed part-way: delete it to start a new run"
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=refusal):
        fit(model, digits16[0], checkpoint=path, **FAST)  # a fresh run
    assert snapshot(tmp_path) == before
    save_sharded_checkpoint({"epoch": 3, "schedule": {}}, path, model, torch.optim.AdamW(model.parameters()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert load_training_checkpoint(path, model)["epoch"] == 3


# --- the command line's own endings: Ctrl-C, a device this machine lacks ------------------------------------


def test_ctrl_c_during_training_says_how_to_resume_without_a_traceback(tmp_path, monkeypatch, capsys):
    def interrupt(loss):  # Ctrl-C after the first step
        raise KeyboardInterrupt

    real_fit = train.fit
    monkeypatch.setattr(
        train_command, "fit", lambda *args, **kwargs: real_fit(*args, **{**kwargs, "on_step": interrupt})
    )
    with pytest.raises(SystemExit) as stop:
        train.cli([*CLI, "--out", str(tmp_path / "run")])
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted; resume with --resume" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was finished, so nothing was written


def test_cli_bad_input_ends_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.cli([*CLI, "--out", str(tmp_path / "run"), "--clip-grad", "-1"])
    assert stop.value.code == "error: --clip-grad must be a finite number >= 0 (0: no clipping), got -1.0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch):
    """--device cuda on a CPU-only torch once ended in a raw assertion from torch.cuda."""
    monkeypatch.setattr(coatlib.data, "load_splits", pytest.fail)
    with pytest.raises(ValueError, match=r"device 'cuda' needs a CUDA GPU, and this is .*: use --device cpu"):
        main([*CLI, "--out", str(tmp_path / "run"), "--device", "cuda"])
    with pytest.raises(ValueError, match=r"device 'cuda:1' needs a CUDA GPU"):
        fit(tiny_cnn(), Subset(load("digits", "train", image_size=16), range(64)), device="cuda:1", progress=False)
    assert list(tmp_path.iterdir()) == []


# --- one checkpoint reader: create_model(name, checkpoint_path=...) ----------------------------------------


@pytest.fixture(scope="module")
def pico_files(tmp_path_factory):
    """coatnet_pico (10 classes, 32x32) saved as a plain state dict, as fit's checkpoint.pt and in the common
    wrappers (DDP's module. prefix included)."""
    folder = tmp_path_factory.mktemp("pico")
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", num_classes=10, image_size=32).eval()
    state = model.state_dict()
    torch.save(state, folder / "plain.pt")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, folder / "model.pt")
    torch.save({"state_dict": state, "optimizer": {}}, folder / "state_dict.pt")
    data = Subset(load("digits", "train", image_size=32), range(16))
    fit(model, data, None, 1, batch_size=16, progress=False, checkpoint=folder / "checkpoint.pt")
    return folder, model.eval()


@pytest.mark.parametrize("name", ["plain.pt", "model.pt", "state_dict.pt", "checkpoint.pt"])
def test_checkpoint_path_reads_state_dicts_fit_checkpoints_and_wrappers(pico_files, name):
    """fit's own checkpoint.pt and the wrappers once failed with 'not enough values to unpack' (timm's renamer)."""
    folder, trained = pico_files
    model = coatlib.create_model("coatnet_pico", num_classes=10, image_size=32, checkpoint_path=folder / name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        same = torch.equal(model.eval()(x), trained(x))
    assert same == (name == "checkpoint.pt")  # the others were saved before fit trained it
    if name == "checkpoint.pt":
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(num_classes=3, image_size=32), r"head: 2 of another shape .*Hint: build the model with num_classes=10"),
        ({}, r"num_classes=10 .* and image_size=32"),  # the defaults: 1000 classes, 224 px
        (dict(num_classes=10, image_size=64), r"S3: 2 of another shape .*S4: 1 .*image_size=32"),
        (dict(num_classes=10, image_size=32, layout="C-T-T-T"), r"S2: 13 missing .*23 unexpected.*layout='C-C-T-T'"),
    ],
)
def test_checkpoint_path_that_does_not_fit_says_which_option_to_change(pico_files, options, match):
    """A wrong num_classes once gave torch's raw size mismatch."""
    folder, _ = pico_files
    with pytest.raises(ValueError, match=r"(?s)plain.pt does not fit this CoAtNet .*" + match):
        coatlib.create_model("coatnet_pico", checkpoint_path=folder / "plain.pt", **options)


def test_a_resnet_state_dict_is_not_taken_for_a_timm_coatnet(tmp_path):
    """A ResNet state dict was once 'looks like coatnet_nano_rw' (timm's renamer was the fallback)."""
    path = tmp_path / "resnet.pt"
    torch.save(coatlib.create_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match=r"(?s)does not fit this RwCoAtNet .*layer1: .*another architecture") as e:
        coatlib.create_model("coatnet_nano_rw", checkpoint_path=path)
    assert "looks like" not in str(e.value)


def test_a_sharded_checkpoint_folder_says_how_to_load_it(tmp_path):
    with pytest.raises(ValueError, match=r"a folder, the checkpoint of a sharded run .*train.load_training_checkpoint"):
        coatlib.create_model("coatnet_pico", checkpoint_path=tmp_path)


# --- model input: layout and type ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["coatnet_pico", "coatnet_nano_rw", "resnet18", "vit_ti_16"])
def test_channels_last_input_is_told_to_permute(name):
    """NHWC input once got the advice 'in_chans=32'."""
    model = coatlib.create_model(name, num_classes=2, image_size=32).eval()
    with pytest.raises(ValueError, match=r"channels last \(batch, H, W, 3\): permute them to \(B, C, H, W\)"):
        model(torch.randn(2, 32, 32, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["coatnet_pico", "coatnet_nano_rw", "resnet18"])
def test_images_of_another_float_type_get_a_clear_error_not_a_silent_cast(name, dtype):
    """float64 or bfloat16 input once met a raw dtype error deep in the model. The choice: no silent cast
    (it would hide a model left in another type); the error says how to convert, and autocast passes."""
    model = coatlib.create_model(name, num_classes=2, image_size=32).eval()
    x = torch.randn(1, 3, 32, 32, dtype=dtype)
    with pytest.raises(TypeError, match=rf"got {dtype} images but the model's weights are torch.float32: .*x.to\("):
        model(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.to(torch.bfloat16)).shape == (1, 2)  # under autocast the types may differ
    assert model.to(dtype)(x).dtype == dtype  # a model converted to the images' type takes them


# --- the memory planner -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_memory_planner_refuses_a_gpu_memory_that_is_not_a_positive_number(value):
    """--gpu-memory nan once printed 'nan GiB' plans."""
    from coatlib import memory

    with pytest.raises(ValueError, match=rf"gpu_memory \(--gpu-memory\) must be a finite number > 0 .*got {value}"):
        memory.main(["coatnet_pico", "--gpu-memory", value])


def test_memory_planner_says_a_model_without_blocks_cannot_be_sharded_or_checkpointed(capsys):
    """FSDP with activation checkpointing once 'fitted' for ResNet, which fit cannot shard or checkpoint."""
    from coatlib import memory

    plans = memory.main(["resnet18", "--gpu-memory", "80"])
    out = capsys.readouterr().out
    assert [p.fits for p in plans if p.strategy != "DDP"] == [False] * 4
    assert [p.fits for p in plans if p.strategy == "DDP"] == [True, True]
    assert out.count("  cannot") == 4 and "resnet18 has no blocks" in out and "cannot shard it (FSDP)" in out
    memory.main(["resnet50", "--image-size", "512", "--batch", "256", "--gpu-memory", "8"])
    assert "coatlib.train can train it with DDP only" in capsys.readouterr().out


# --- the experiment commands: workers, results files, where they write -------------------------------------------


def test_experiments_refuse_workers_0_before_anything(tmp_path, capsys):
    """--workers 0 was a ZeroDivisionError."""
    from coatlib.studies import inside, layouts_run
    from coatlib.studies.command import main

    for command in ("inside", "layouts"):
        with pytest.raises(SystemExit):
            main([command, "--quick", "--workers", "0", "--out", str(tmp_path / command)])
        assert "--workers: must be an int >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"workers \(--workers\) must be an int >= 1"):
        inside.inside(tmp_path / "inside", quick=True, workers=0)
    with pytest.raises(ValueError, match=r"workers \(--workers\) must be an int >= 1"):
        layouts_run.layout_study("quick", tmp_path / "layouts", workers=0)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_results_file_is_reported_with_its_name(tmp_path):
    """A corrupted results JSON was once reported without its file name."""
    from coatlib.studies import layouts
    from coatlib.studies.command import main
    from coatlib.studies.inside_record import inside_results

    (tmp_path / "inside.json").write_text('{"settings": {"variants": [')
    (tmp_path / "layout_study_quick.json").write_text("{not json")
    before = snapshot(tmp_path)
    inside_json, study_json = (str(tmp_path / name) for name in ("inside.json", "layout_study_quick.json"))
    fix = r"is not a readable JSON record .*Restore it .* or delete it and run the experiment again"
    with pytest.raises(ValueError, match=rf"{inside_json} {fix}"):
        inside_results(tmp_path)
    with pytest.raises(SystemExit, match=rf"error: {inside_json} {fix}"):
        main(["inside", "--quick", "--out", str(tmp_path), "--quiet"])
    with pytest.raises(ValueError, match=rf"{study_json} {fix}"):
        layouts.study_results(study_json)
    with pytest.raises(SystemExit, match=rf"error: {study_json} {fix}"):
        main(["layouts", "--quick", "--out", str(tmp_path), "--quiet"])
    assert snapshot(tmp_path) == before


def test_experiment_commands_write_under_the_current_folder_never_into_the_package(tmp_path, monkeypatch):
    """`studies inside --quick` once wrote into coatlib/artefacts/inside_coatnet/, its default --out."""
    from coatlib.studies import inside, layouts_run
    from coatlib.studies.command import main
    from coatlib.studies.records import PACKAGE

    seen = []
    monkeypatch.setattr(inside, "inside", lambda out, **kwargs: seen.append(out) or {})
    monkeypatch.setattr(layouts_run, "layout_study", lambda preset, out, **kwargs: seen.append(out) or {})
    monkeypatch.chdir(tmp_path)
    main(["inside", "--quick", "--quiet"])
    main(["layouts", "--quick", "--quiet"])
    assert [(tmp_path / out).resolve().is_relative_to(tmp_path) for out in seen] == [True, True]
    package = PACKAGE / "artefacts" / "new_results"
    with pytest.raises(SystemExit, match="inside the coatlib package"):
        main(["layouts", "--quick", "--out", str(package), "--quiet"])
    assert not package.exists()
