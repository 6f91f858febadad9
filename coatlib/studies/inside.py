"""The models of the chapter "Inside a trained CoAtNet": trained once by ``python -m coatlib.studies inside``.

``inside(...)`` trains ``coatnet_pico`` at 128 pixels on ``textures``, as C-C-T-T
with and without a larger learning rate for its bias tables, as C-T-T-T and
ViT-Rel with it, and as C-C-C-C, all matched in parameters, for three seeds; it
measures how far each attention layer reaches (see its docstring for the
argument behind the settings). It writes ``OUT/inside.json`` (``--out``,
default ``coatlib-results/inside``; resumable: the file is rewritten after every
finished run and a study started again skips what it holds) and each model's
state dict in float16. ``coatlib.studies.inside_record`` reads the record and the models.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

import coatlib.data
from coatlib.flops import count_params
from coatlib.inspection import (
    attention_distance_ratios,
    depthwise_kernels,
    effective_receptive_field,
    erf_size,
    relative_attention_layers,
    table_distance_ratio,
)
from coatlib.models.coatnet import CONFIGS, CoAtNet, parse_layout
from coatlib.studies import layouts
from coatlib.studies.layouts import stored_config
from coatlib.studies.records import check_workers, hardware, pool, read_record, results_folder, save
from coatlib.train import evaluate, fit, warmup_cosine

INSIDE = {
    "data": "textures",  # crops of six texture photographs, 2,400 training and 600 test
    "model": "coatnet_pico",  # the base config; every layout is matched to its C-C-T-T in parameters
    "image_size": 128,  # S3 (and ViT-Rel) see an 8x8 map, S4 a 4x4 one, C-T-T-T's S2 a 16x16 one
    "variants": (  # name, layout, factor on the bias tables' learning rate
        {"name": "C-C-T-T x10", "layout": "C-C-T-T", "table_lr_scale": 10.0},
        {"name": "C-C-T-T", "layout": "C-C-T-T", "table_lr_scale": 1.0},
        {"name": "C-T-T-T x10", "layout": "C-T-T-T", "table_lr_scale": 10.0},
        {"name": "ViT-Rel x10", "layout": "ViT-Rel", "table_lr_scale": 10.0},
        {"name": "C-C-C-C", "layout": "C-C-C-C", "table_lr_scale": 1.0},
    ),
    "seeds": (0, 1, 2),  # three: the CPU budget of about 45 minutes on 2 cores
    "epochs": 10,  # 150 steps of 16 an epoch: 1,500 steps
    "batch_size": 16,
    "lr": 2e-3,
    "warmup_epochs": 0.5,  # 5% of the steps, then cosine decay to 0
    "weight_decay": 0.05,  # not on the tables
    "label_smoothing": 0.1,
    "amp": None,  # float32: a table entry of 0.02 added to bfloat16 logits would be rounded away
    "probe_images": 60,  # test crops (10 per class) on which the attention is measured
    "artefact_seeds": (0,),  # the seeds whose weights --update-artefact ships (the chapter loads those)
}
# --quick: the whole path at toy size (seconds a run), for the tests and for drafting the chapter.
INSIDE_QUICK = {**INSIDE, "image_size": 64, "seeds": (0, 1), "epochs": 1, "subset": 64, "probe_images": 12}
INSIDE_DIR = Path(__file__).resolve().parent.parent / "artefacts" / "inside_coatnet"  # ships with the package
INSIDE_OUT = Path("coatlib-results") / "inside"


def inside(
    out: str | Path = INSIDE_OUT,
    quick: bool = False,
    workers: int = 1,
    progress: bool = False,
    command: str = "",
) -> dict:
    """Train the models of the chapter "Inside a trained CoAtNet"; write ``OUT/inside.json`` and the weights.

    **Why these settings.** The question is whether relative attention learns to be local, and why
    it did not in the chapter's first version (111 steps at a peak rate of 3e-3). AdamW moves a
    parameter by about its learning rate per step whatever the gradient, so over a run of ``T``
    steps with ``w`` of linear warm-up and cosine decay a table entry moves at most about
    ``lr * (w / 2 + (T - w) / 2) = lr * T / 2``: 0.17 for the first version, far too little for a
    pre-softmax table, which needs entries several units apart to focus attention (to put 90% of a
    query's attention on its 9 neighbours out of 64 keys, they need ``exp(dw) = 55``, ``dw = 4``).
    Chapter 3 measured it: at a summed rate of 1.3 its tables spread over about 2 units, and with the
    tables' rate multiplied by 10 (13) over about 8, which is when pre-softmax caught up. Here
    ``T = 10 * 150 = 1,500`` steps at ``lr = 2e-3`` give every parameter a budget of 1.5 (the tables
    of the plain variant too, as in chapter 3), and the tables of the ``x10`` variants 15, chapter
    3's working budget. (``inside_budget`` computes both exactly from the schedule.)

    **What is compared.** C-C-T-T with and without the multiplier (is the budget what kept the
    tables flat?); C-T-T-T and ViT-Rel with it, which have no convolution stage before their first
    attention stage (C-T-T-T's S2 follows the stem and one MBConv stage, ViT-Rel has only a 16x16
    patch stem): if "the convolutions before it already did that job" is why C-C-T-T's tables stay
    flat, theirs should become local; and C-C-C-C. Every layout is matched to C-C-T-T's parameters
    (``coatlib.studies.layouts.matched_config``: only the last stage's width changes). Each variant is
    trained for every seed (the seed sets the initial weights and the data order).

    **What is measured** (``inside_run``): the test accuracy on the 600 test crops, and for every
    relative-attention layer, before and after training, how far its attention reaches
    (``coatlib.inspection.distance_ratio``): from the table alone and from the actual attention on
    ``probe_images`` test crops, per head; plus the tables' spread, the effective receptive fields
    and the depthwise kernels' centre share.

    ``workers`` processes train at once, each with ``torch.get_num_threads() // workers`` threads.
    Resumable: ``inside.json`` is rewritten atomically after every finished run, and a run started
    again skips what it holds. ``out`` may not lie inside the installed package;
    ``coatlib.studies.inside_record.update_inside_artefact`` copies a finished record there.
    """
    check_workers(workers)
    out = results_folder(out)
    settings = json.loads(json.dumps(INSIDE_QUICK if quick else INSIDE))  # tuples -> lists, as the JSON holds them
    path = out / "inside.json"
    record = read_record(path) if path.is_file() else None
    if record is not None and record["settings"] != settings:
        raise ValueError(f"{path} holds a run with other settings: delete it, or pass another --out, to start this one")
    if record is None:
        record = {
            "experiment": "inside",
            "preset": "quick" if quick else "cpu",
            "settings": settings,
            "models": inside_models(settings),
            "budget": inside_budget(settings),
            "hardware": hardware("cuda" if torch.cuda.is_available() else None, workers),
            "results": [],
        }
        save(record, path, command)
    done = {(r["variant"], r["seed"]) for r in record["results"]}
    threads = max(1, torch.get_num_threads() // workers)
    jobs = [
        {"settings": settings, "variant": v, "seed": seed, "config": record["models"][v["layout"]]["config"]}
        | {"out": str(out), "threads": threads}
        for seed in settings["seeds"]  # seed by seed: an interrupted run has whole seeds
        for v in settings["variants"]
        if (v["name"], seed) not in done
    ]
    order = {
        (v["name"], seed): i
        for i, (seed, v) in enumerate((s, v) for s in settings["seeds"] for v in settings["variants"])
    }
    with pool(workers) as imap:
        for row in imap(inside_run, jobs):
            record["results"].append(row)
            record["results"].sort(key=lambda r: order[r["variant"], r["seed"]])
            save(record, path, command)
            if progress:
                print(_inside_line(row), flush=True)
    return record


def inside_models(settings: dict) -> dict[str, dict]:
    """Layout -> its config matched to C-C-T-T's parameters, and its parameter count."""
    classes = len(coatlib.data.load(settings["data"], "test", image_size=settings["image_size"]).classes)
    base = CONFIGS[settings["model"]]
    models = {}
    for layout in dict.fromkeys(v["layout"] for v in settings["variants"]):
        config = layouts.matched_config(base, layout, settings["image_size"], classes)
        model = CoAtNet(config, num_classes=classes, image_size=settings["image_size"], layout=layout)
        models[layout] = {"config": dataclasses.asdict(config), "params": count_params(model), "classes": classes}
    return models


def inside_budget(settings: dict) -> dict:
    """The schedule's steps and summed learning rate (how far AdamW can move a parameter, in units of
    the parameter), and each variant's table budget: the sum times its ``table_lr_scale``."""
    train_images = settings.get("subset") or len(coatlib.data.load(settings["data"], "train", image_size=8))
    per_epoch = train_images // settings["batch_size"]
    steps, warmup = settings["epochs"] * per_epoch, round(settings["warmup_epochs"] * per_epoch)
    summed = settings["lr"] * sum(warmup_cosine(s, warmup, steps) for s in range(steps))
    tables = {v["name"]: summed * v["table_lr_scale"] for v in settings["variants"]}
    return {"steps": steps, "warmup_steps": warmup, "summed_lr": summed, "table_budget": tables}


def _inside_data(settings: dict):
    """Training set, test set and the probe images (``probe_images`` test crops, evenly over the classes)."""
    train, test = coatlib.data.load_splits(settings["data"], settings["image_size"])
    subset = settings.get("subset")
    if subset:  # the first images of a fixed random order, every class in it
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        train = Subset(train, order[:subset].tolist())
        test = Subset(test, order[: subset // 2].remainder(len(test)).tolist())
    step = max(1, len(test) // settings["probe_images"])
    probe = torch.stack([test[i][0] for i in range(0, len(test), step)][: settings["probe_images"]])
    return train, test, probe


def inside_run(job: dict) -> dict:
    """Train one variant for one seed (``job``: settings, variant, seed, config, out, threads); save its
    float16 state dict in ``out``; return its row of the record."""
    torch.set_num_threads(job["threads"])
    settings, variant, seed = job["settings"], job["variant"], job["seed"]
    train, test, probe = _inside_data(settings)
    model = build_model(settings, job["config"], variant["layout"], seed)
    initial = copy.deepcopy(model)
    losses: list[float] = []
    t0 = time.perf_counter()
    fit(
        model,
        train,
        None,
        settings["epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        warmup_epochs=settings["warmup_epochs"],
        label_smoothing=settings["label_smoothing"],
        amp=settings["amp"],
        seed=seed,
        progress=False,
        on_step=losses.append,
        table_lr_scale=variant["table_lr_scale"],
    )
    seconds = time.perf_counter() - t0
    test_loss, test_acc = evaluate(model, test)
    model.cpu()  # the measurements below run on the CPU, beside the initial model
    layers = []
    before, after = attention_distance_ratios(initial, probe), attention_distance_ratios(model, probe)
    for (name, trained), (_, start), attention, attention_init in zip(
        relative_attention_layers(model), relative_attention_layers(initial), after, before
    ):
        if trained.map_size == (1, 1):  # one key: attention has nowhere else to go (S4 at 32 pixels)
            continue
        table, table_init = trained.relative_bias_table.detach(), start.relative_bias_table.detach()
        layers.append(
            {
                "layer": name,
                "map": list(trained.map_size),
                "table_ratio": table_distance_ratio(table).tolist(),
                "table_ratio_init": table_distance_ratio(table_init).tolist(),
                "attention_ratio": attention.tolist(),
                "attention_ratio_init": attention_init.tolist(),
                "table_spread": (table.flatten(1).amax(1) - table.flatten(1).amin(1)).tolist(),
                "table_change": (table - table_init).abs().max().item(),
            }
        )
    kinds = parse_layout(variant["layout"])
    erf, centre = None, None
    if kinds is not None:
        erf = [erf_size(effective_receptive_field(model, probe, s)) for s in range(1, 5)]
        centre = {f"S{s}": _centre_share(depthwise_kernels(model, s)) for s in range(1, 5) if kinds[s - 1] == "C"}
    weights = f"{variant['name'].replace('-', '').replace(' ', '_').lower()}_seed{seed}.pt"
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    partial = Path(job["out"]) / (weights + ".partial")
    torch.save(state, partial)
    partial.replace(Path(job["out"]) / weights)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "variant": variant["name"],
        "layout": variant["layout"],
        "table_lr_scale": variant["table_lr_scale"],
        "seed": seed,
        "params": count_params(model),
        "weights": weights,
        "steps": len(losses),
        "seconds": seconds,
        "train_loss": sum(tail) / len(tail),
        "loss_curve": [sum(c) / len(c) for c in _chunks(losses, 30)],
        "test_loss": test_loss,
        "test_acc": test_acc,
        "test_images": len(test),
        "layers": layers,
        "erf": erf,
        "centre_share": centre,
    }


def build_model(settings: dict, config: dict, layout: str, seed: int) -> torch.nn.Module:
    """The untrained model: ``torch.manual_seed(seed)``, then the stored (matched) config."""
    classes = len(coatlib.data.load(settings["data"], "test", image_size=settings["image_size"]).classes)
    torch.manual_seed(seed)
    return CoAtNet(stored_config(config), num_classes=classes, image_size=settings["image_size"], layout=layout)


def _centre_share(kernels: list[torch.Tensor]) -> float:
    """Share of the mean absolute depthwise weight on the centre tap, over all channels of all blocks
    (a flat 3x3 kernel: 1/9)."""
    k = torch.cat(kernels).abs().mean(0)
    return (k[k.shape[0] // 2, k.shape[1] // 2] / k.sum()).item()


def _chunks(values: list[float], n: int) -> list[list[float]]:
    size = max(1, -(-len(values) // n))
    return [values[i : i + size] for i in range(0, len(values), size)]


def _inside_line(r: dict) -> str:
    first = r["layers"][0] if r["layers"] else None
    reach = ""
    if first:
        table = sum(first["table_ratio"]) / len(first["table_ratio"])
        attention = sum(first["attention_ratio"]) / len(first["attention_ratio"])
        reach = f", {first['layer']} reach: table {table:.3f}, attention {attention:.3f}"
    return f"{r['variant']:12s} seed {r['seed']}: test acc {r['test_acc']:.3f}{reach} ({r['seconds']:.0f} s)"
