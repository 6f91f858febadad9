"""Running the layout study (:mod:`coatlib.studies.layouts`): its images, one run, the learning-rate
pilot, the gate and the study, resumable.

``layout_study(preset, out)`` runs everything: the record is rewritten atomically after every run
and a restarted study skips what it holds. ``python -m coatlib.studies layouts`` is its command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

import coatlib.data
from coatlib.data.base import TensorImages
from coatlib.models.coatnet import LAYOUTS, CoAtNet
from coatlib.studies.bag_of_features import bag_of_features
from coatlib.studies.layouts import PAPER, PRESETS, stored_config, study_models, study_results
from coatlib.studies.records import check_workers, hardware, pool, read_record, save
from coatlib.train import evaluate, fit

# ---------------------------------------------------------------------------------------------
# Images


def images(task: dict, split: str, size: int, settings: dict, cache: str | Path | None = None) -> Dataset:
    """The first ``size`` images of ``task``'s ``split`` at the study's size, as uint8 in memory.

    With ``cache`` (a folder that ``prepare_images`` filled) they are a slice of the stored
    stream, memory-mapped, so parallel runs share one copy; without, they are generated here.
    Every training set is a start of the same stream (the real world's nested sets).
    """
    d = _dataset(task, split, settings, size)
    path = _cache_path(task, split, settings, cache)
    if path is not None and path.is_file():
        pixels, labels = torch.load(path, weights_only=True, mmap=True)
        if len(labels) < size:
            raise ValueError(f"{path} holds {len(labels)} images, {size} are asked for: delete it to regenerate")
        pixels, labels = pixels[:size], labels[:size]
    else:
        pixels, labels = _generate((task, split, settings, 0, size))
    return TensorImages(pixels, labels, d.classes, d.mean.flatten().tolist(), d.std.flatten().tolist(), 3)


def prepare_images(settings: dict, cache: str | Path, workers: int = 1, chunk: int = 2000) -> None:
    """Generate every image the study needs once, in ``workers`` processes, into ``cache``."""
    s = settings
    largest = max(s["steps"] * s["batch_size"], *s["sizes"])
    needs = [("task", "train", largest), ("task", "test", s["test_size"])]
    needs += [("local", "train", s["local_size"]), ("local", "test", s["test_size"])]
    for task, split, size in needs:
        path = _cache_path(s[task], split, s, cache)
        if path.is_file() and len(torch.load(path, weights_only=True, mmap=True)[1]) >= size:
            continue
        chunks = [(s[task], split, s, start, min(start + chunk, size)) for start in range(0, size, chunk)]
        with pool(workers, ordered=True) as imap:
            parts = list(imap(_generate, chunks))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save((torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts])), partial)
        partial.replace(path)


def _generate(job: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``start`` to ``stop`` of a split as uint8 ``(n, 1, H, W)`` and their labels."""
    task, split, settings, start, stop = job
    d = _dataset(task, split, settings, stop)
    raw = [d.raw(i) for i in range(start, stop)]
    pixels = (torch.stack([x for x, _ in raw]) * 255).round().to(torch.uint8)
    return pixels, torch.tensor([y for _, y in raw])


def _dataset(task: dict, split: str, settings: dict, size: int) -> Dataset:
    options = {k: v for k, v in task.items() if k != "data"}
    return coatlib.data.load(task["data"], split, settings["image_size"], size=size, **options)


def _cache_path(task: dict, split: str, settings: dict, cache: str | Path | None) -> Path | None:
    if cache is None:
        return None
    options = "_".join(f"{k}{v}" for k, v in sorted(task.items()) if k != "data")
    return Path(cache) / f"{task['data']}_{options}_{split}_{settings['image_size']}.pt"


# ---------------------------------------------------------------------------------------------
# One run


def run_one(job: dict) -> dict:
    """Train one model (``job``: kind, layout, world, size, steps, seed, lr, amp, settings); return its row.

    ``world`` is "ideal" (``steps * batch_size`` fresh images, each seen once) or "real" (the
    first ``size`` images, seen ``steps * batch_size / size`` times). The row holds the online
    loss (mean training loss over the last ``online_fraction`` of the steps) and its sampling
    variance, the loss curve (30 points), the final training loss and accuracy in eval mode on
    up to ``train_eval_size`` training images, the test loss and accuracy, and the seconds.
    """
    settings = job["settings"]
    torch.set_num_threads(job["threads"])
    batch, steps = settings["batch_size"], job["steps"]
    seen = steps * batch
    size = seen if job["world"] == "ideal" else job["size"]
    task = settings[job["task"]]
    train = images(task, "train", size, settings, job.get("cache"))
    test = images(task, "test", settings["test_size"], settings, job.get("cache"))
    torch.manual_seed(job["seed"])
    model = CoAtNet(  # the configs are matched with 100 outputs; the local task's head has 10
        stored_config(job["config"]),
        num_classes=len(train.classes),
        image_size=settings["image_size"],
        layout=job["layout"],
    )
    losses: list[float] = []
    t0 = time.perf_counter()
    fit(
        model,
        train,
        None,
        seen // size,
        batch_size=batch,
        lr=job["lr"],
        weight_decay=settings["weight_decay"],
        warmup_epochs=settings["warmup"] * seen / size,
        label_smoothing=0.0,
        amp=job["amp"],
        seed=job["seed"],
        progress=False,
        on_step=losses.append,
        device=job.get("device"),
    )
    seconds = time.perf_counter() - t0
    last = np.asarray(losses[-max(1, round(settings["online_fraction"] * len(losses))) :])
    train_eval = Subset(train, range(min(size, settings["train_eval_size"])))
    train_loss, train_acc = evaluate(model, train_eval, amp=job["amp"])
    test_loss, test_acc = evaluate(model, test, amp=job["amp"])
    return {
        **{k: job[k] for k in ("kind", "task", "world", "layout", "size", "seed", "lr", "amp")},
        "size": size,
        "steps": len(losses),
        "online_loss": float(last.mean()),
        "online_loss_var": float(last.var(ddof=1) / len(last)) if len(last) > 1 else 0.0,
        "loss_curve": [float(c.mean()) for c in np.array_split(np.asarray(losses), min(30, len(losses)))],
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "test_images": len(test),
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------
# The study


def layout_study(
    preset: str = "cpu",
    out: str | Path = "coatlib-results",
    workers: int = 1,
    device: str | None = None,
    progress: bool = False,
    command: str = "",
    earlier: list[str | Path] = (),
) -> dict:
    """Run the study of ``preset``; write ``OUT/layout_study_PRESET.json``; return the record.

    1. The models (``study_models``) and the bag-of-features baseline.
    2. The rate pilot in the ideal world: every layout at every rate of ``lr_grid``, seed
       ``lr_seed``; ``chosen_lrs`` keeps the lowest online loss.
    3. The gate: the study's ideal-world runs of its first seed, and the amp pilot (C-C-T-T at
       its rate in float32, against its autocast run of the rate pilot). ``gate`` must pass,
       or ``GateFailed`` is raised (the record keeps the pilots).
    4. The rest of the study: every seed, layout and regime (ideal; real at every size; the
       local task).

    ``earlier``: records of abandoned attempts (JSON files ``layout_study`` wrote), kept in the
    new record under ``earlier_pilots`` with their settings and runs, so that every pilot is on file.

    ``workers`` processes train at once, each with ``torch.get_num_threads() // workers``
    threads. Resumable: runs already in the record are skipped.
    """
    check_workers(workers)
    settings = json.loads(json.dumps(PRESETS[preset]))  # tuples -> lists, as the JSON holds them
    path = Path(out) / f"layout_study_{preset}.json"
    record = read_record(path) if path.is_file() else None
    if record is not None and record["settings"] != settings:
        raise ValueError(
            f"{path} holds a study with other settings: delete it, or pass another --out, to start this one"
        )
    if record is None:
        record = {"experiment": "layout_study", "preset": preset, "settings": settings, "paper": PAPER, "runs": []}
        record["models"] = study_models(settings)
        record["hardware"] = hardware(device, workers)
        record["earlier_pilots"] = [_earlier(p) for p in earlier]
    cache = path.parent / f"layout_study_{preset}_images"
    prepare_images(settings, cache, workers)
    if "baseline" not in record:
        b = settings["baseline"]
        record["baseline"] = bag_of_features(
            images(settings["task"], "train", b["train"], settings, cache),
            images(settings["task"], "test", b["test"], settings, cache),
        )
        save(record, path, command)
    threads = max(1, torch.get_num_threads() // workers)
    for stage in ("lr", "pilot", "study"):
        if stage == "pilot":
            record["lr"] = chosen_lrs(record)
        if stage == "study":
            record["gate"] = gate(record)
            save(record, path, command)
            if settings["require_gate"] and not record["gate"]["passed"]:
                raise GateFailed(record["gate"]["reason"])
        jobs = [{**j, "threads": threads, "cache": str(cache), "device": device} for j in study_jobs(record, stage)]
        with pool(workers) as imap:
            for row in imap(run_one, jobs):
                record["runs"].append(row)
                save(record, path, command)
                if progress:
                    print(_line(row), flush=True)
    return read_record(path)


class GateFailed(RuntimeError):
    """The pilot's ideal-world losses do not separate the layouts: the study would measure noise."""


def study_jobs(record: dict, stage: str) -> list[dict]:
    """The runs of ``stage`` ("lr", "pilot" or "study") not yet in ``record``."""
    s = record["settings"]
    amp = s["amp"]
    if stage == "lr":
        specs = [
            ("lr", "task", "ideal", name, 0, s["steps"], s["lr_seed"], lr, amp)
            for name in LAYOUTS
            for lr in s["lr_grid"]
        ]
    elif stage == "pilot":
        lr = record["lr"]
        specs = [("study", "task", "ideal", name, 0, s["steps"], s["seeds"][0], lr[name], amp) for name in LAYOUTS]
        if amp is not None:
            specs.append(("amp", "task", "ideal", "C-C-T-T", 0, s["steps"], s["lr_seed"], lr["C-C-T-T"], None))
    else:
        lr = record["lr"]
        specs = []
        for seed in s["seeds"]:  # seed by seed, so that an interrupted study has whole seeds
            for layout in LAYOUTS:
                specs.append(("study", "task", "ideal", layout, 0, s["steps"], seed, lr[layout], amp))
                specs += [("study", "task", "real", layout, n, s["steps"], seed, lr[layout], amp) for n in s["sizes"]]
                specs.append(
                    ("study", "local", "real", layout, s["local_size"], s["local_steps"], seed, lr[layout], amp)
                )
    done = {_key(r) for r in record["runs"]}
    keys = ("kind", "task", "world", "layout", "size", "steps", "seed", "lr", "amp")
    jobs = [dict(zip(keys, spec)) for spec in specs]
    for job in jobs:
        if job["world"] == "ideal":
            job["size"] = job["steps"] * s["batch_size"]
        job["config"] = record["models"][job["layout"]]["config"]
        job["settings"] = s
    return [j for j in jobs if _key(j) not in done]


def _key(r: dict) -> tuple:
    return (r["kind"], r["task"], r["world"], r["layout"], r["size"], r["seed"], r["lr"], r["amp"])


def chosen_lrs(record: dict) -> dict[str, float]:
    """Layout -> the rate of ``lr_grid`` with the lowest ideal-world online loss in the rate pilot.

    Chosen on the ideal world's training loss, which is a test loss on fresh images: no test or
    validation accuracy of any run of the study is looked at, and the same rate serves every regime.
    """
    chosen = {}
    for layout in LAYOUTS:
        tried = [r for r in record["runs"] if r["kind"] == "lr" and r["layout"] == layout]
        if len(tried) < len(record["settings"]["lr_grid"]):
            raise ValueError(f"the learning-rate pilot of {layout} is unfinished ({len(tried)} rates of the grid)")
        chosen[layout] = min(tried, key=lambda r: r["online_loss"])["lr"]
    return chosen


def gate(record: dict) -> dict:
    """Do the pilot's ideal-world losses separate the layouts by more than their seed spread?

    Each layout has two ideal-world runs at its rate: the rate pilot's, and the study's first
    seed (which no choice has looked at). Two layouts
    are *separated* when the gap between their mean online losses exceeds the larger of their two
    seed spreads (the absolute difference of its two runs). The gate passes when at least one convolution-heavy layout
    (C-C-C-C, C-C-C-T) is separated from at least one attention-heavy one (C-T-T-T, ViT-Rel):
    then the study can see a difference where the paper claims one; otherwise it measures noise.
    """
    runs = {}
    for layout, lr in record["lr"].items():
        pair = [
            r["online_loss"]
            for r in record["runs"]
            if r["kind"] in ("lr", "study")
            and r["world"] == "ideal"
            and r["seed"] in (record["settings"]["lr_seed"], record["settings"]["seeds"][0])
            and r["layout"] == layout
            and r["lr"] == lr
            and r["amp"] == record["settings"]["amp"]
        ]
        if len(pair) < 2:
            raise ValueError(f"the gate needs two pilot seeds of {layout}; the record has {len(pair)}")
        runs[layout] = pair
    mean = {name: float(np.mean(v)) for name, v in runs.items()}
    spread = {name: float(abs(v[0] - v[1])) for name, v in runs.items()}
    separated = [
        [a, b]
        for i, a in enumerate(LAYOUTS)
        for b in LAYOUTS[i + 1 :]
        if abs(mean[a] - mean[b]) > max(spread[a], spread[b])
    ]
    conv, attention = ("C-C-C-C", "C-C-C-T"), ("C-T-T-T", "ViT-Rel")
    passed = any(sorted(p) == sorted([a, b]) for p in separated for a in conv for b in attention)
    reason = (
        f"{len(separated)} of 10 layout pairs separated, a convolution-heavy against an attention-heavy one among them"
        if passed
        else "no convolution-heavy layout is separated from an attention-heavy one by more than the seed spread: "
        "change the task or the budget (steps, batch) and run the pilot again"
    )
    return {"mean": mean, "spread": spread, "separated": separated, "passed": passed, "reason": reason}


def _earlier(path: str | Path) -> dict:
    """What an abandoned attempt's record holds that matters: its settings, gate and runs."""
    record = study_results(path)
    keep = ("command", "date", "versions", "hardware", "settings", "lr", "gate", "runs")
    return {"file": Path(path).name, **{k: record[k] for k in keep if k in record}}


def _line(r: dict) -> str:
    return (
        f"{r['kind']:5s} {r['task']:5s} {r['world']:5s} {r['layout']:7s} n={r['size']:<6d} seed {r['seed']} "
        f"lr {r['lr']:.0e} {r['amp'] or 'fp32'}: online {r['online_loss']:.3f}, train {r['train_loss']:.3f}, "
        f"test acc {r['test_acc']:.3f} ({r['seconds']:.0f} s)"
    )
