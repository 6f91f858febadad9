"""The book's experiments, runnable from a notebook or the command line.

``coatlib.studies.layouts`` is the paper's layout study (section 2.2) in two
regimes, a fixed data set against fresh data; see its docstring.

Command line (each writes a JSON file with the command, the settings and the
library versions)::

    python -m coatlib.experiments layouts --workers 2   # the CPU default, about 75 minutes on 2 cores
    python -m coatlib.experiments layouts --quick       # the whole path at toy size, seconds
    python -m coatlib.experiments layouts --full --device cuda --workers 8   # the GPU preset
    python -m coatlib.experiments inside --workers 2    # about 40 minutes on 2 CPU cores
    python -m coatlib.experiments inside --quick        # the whole path at toy size, a minute

The layout study writes ``OUT/layout_study_PRESET.json`` (``--out``, default
``coatlib-results`` under the current directory), never into the installed
package; ``--update-artefact`` (in a source checkout) then copies the finished
record to ``coatlib/artefacts/``, where the chapter reads it. The study is
resumable: its file is rewritten after every finished run and a study started
again skips what it holds.

``inside(...)`` trains the models that the chapter "Inside a trained
CoAtNet" looks into: ``coatnet_pico`` at 128 pixels on ``textures``, as C-C-T-T
with and without a larger learning rate for its bias tables, as C-T-T-T and
ViT-Rel with it, and as C-C-C-C, all matched in parameters, for three seeds; it
measures how far each attention layer reaches (see its docstring for the
argument behind the settings). It writes ``OUT/inside.json`` (``--out``,
default ``coatlib-results/inside``; resumable like the layout study) and each
model's state dict in float16. ``--update-artefact`` copies the finished record
and the weights of the first seed into ``coatlib/artefacts/inside_coatnet/``,
which ships with the package, so the chapter reads them (``inside_results``,
``inside_model``, ``inside_summary``) in Colab without the repository.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

import coatlib
import coatlib.data
from coatlib.flops import count_params
from coatlib.models.coatnet import CONFIGS, CoAtNet, parse_layout
from coatlib.studies import layouts, stats
from coatlib.studies.layouts import stored_config
from coatlib.studies.records import check_workers, pool, read_record, save
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
INSIDE_DIR = Path(__file__).parent / "artefacts" / "inside_coatnet"
INSIDE_OUT = Path("coatlib-results") / "inside"
PACKAGE = Path(__file__).resolve().parent


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
    ``update_inside_artefact`` copies a finished record there.
    """
    check_workers(workers)
    out = _results_folder(out)
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
            "hardware": layouts._hardware("cuda" if torch.cuda.is_available() else None, workers),
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


def _results_folder(out: str | Path) -> Path:
    """``out`` as a folder for results, refused when it lies inside the installed package."""
    out = Path(out)
    if out.resolve() == PACKAGE or PACKAGE in out.resolve().parents:
        raise ValueError(
            f"{out} is inside the coatlib package ({PACKAGE}): results go to a folder of your own "
            f"(--out; the default lies in the current folder); --update-artefact then copies a finished record into "
            f"the package"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


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
    from coatlib.inspection import (
        attention_distance_ratios,
        depthwise_kernels,
        effective_receptive_field,
        erf_size,
        relative_attention_layers,
        table_distance_ratio,
    )

    torch.set_num_threads(job["threads"])
    settings, variant, seed = job["settings"], job["variant"], job["seed"]
    train, test, probe = _inside_data(settings)
    model = _build(settings, job["config"], variant["layout"], seed)
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


def _build(settings: dict, config: dict, layout: str, seed: int) -> torch.nn.Module:
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


def update_inside_artefact(out: str | Path = INSIDE_OUT, target: str | Path = INSIDE_DIR) -> Path:
    """Copy a finished record of ``inside`` from ``out`` into the package (``coatlib/artefacts/inside_coatnet``),
    with the weights of its ``artefact_seeds``; weights of an older record there are removed."""
    out, target = Path(out), Path(target)
    record = inside_results(out)
    s = record["settings"]
    missing = [(v["name"], seed) for seed in s["seeds"] for v in s["variants"] if not _row(record, v["name"], seed)]
    if missing:
        raise ValueError(
            f"{out / 'inside.json'} is unfinished ({len(missing)} runs missing, e.g. {missing[0]}): "
            f"run `python -m coatlib.experiments inside --out {out}` again to finish it"
        )
    keep = [r["weights"] for r in record["results"] if r["seed"] in s["artefact_seeds"]]
    target.mkdir(parents=True, exist_ok=True)
    for name in keep:
        shutil.copyfile(out / name, target / name)
    for old in target.glob("*.pt"):
        if old.name not in keep:
            old.unlink()
    shutil.copyfile(out / "inside.json", target / "inside.json")
    return target / "inside.json"


def _row(record: dict, variant: str, seed: int) -> dict | None:
    return next((r for r in record["results"] if r["variant"] == variant and r["seed"] == seed), None)


def inside_results(folder: str | Path | None = None) -> dict:
    """The record ``inside`` wrote: command, settings, versions, budget, models and one row per run.

    ``folder`` defaults to the copy that ships with ``coatlib``; where it is missing (a copy of the
    package without its data files), the error says how to get it.
    """
    path = Path(folder or INSIDE_DIR) / "inside.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: install coatlib from the book's repository (pip install "
            "'coatlib @ git+https://github.com/coatnet-from-scratch/coatnet-book@main'), which ships it, "
            "or make it with `python -m coatlib.experiments inside --workers 2` (about 40 minutes on 2 CPU cores)"
        )
    record = read_record(path)
    if "variants" not in record.get("settings", {}):
        raise ValueError(f"{path} is a record of an older version of the experiment: run it again")
    return record


def inside_model(record: dict, variant: str, seed: int = 0, folder: str | Path | None = None) -> torch.nn.Module:
    """The trained model of ``variant`` (e.g. ``"C-C-T-T x10"``) and ``seed`` in ``record``, in eval mode."""
    row = _row(record, variant, seed)
    if row is None:
        raise ValueError(f"no {variant} model of seed {seed} in the record")
    path = Path(folder or INSIDE_DIR) / row["weights"]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the package keeps the weights of seeds {record['settings']['artefact_seeds']}; "
            "the others are in the folder the run wrote (--out)"
        )
    model = initial_model(record, variant, seed)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def initial_model(record: dict, variant: str, seed: int = 0) -> torch.nn.Module:
    """The model of ``variant`` in ``record`` before training: rebuilt from its seed, in eval mode."""
    v = next((v for v in record["settings"]["variants"] if v["name"] == variant), None)
    if v is None:
        names = ", ".join(v["name"] for v in record["settings"]["variants"])
        raise ValueError(f"no variant {variant!r} in the record; it has {names}")
    return _build(record["settings"], record["models"][v["layout"]]["config"], v["layout"], seed).eval()


# The comparisons that test the chapter's explanations, on how far the first attention layer reaches.
INSIDE_COMPARISONS = (
    ("C-C-T-T x10", "C-C-T-T"),  # does a larger table budget make the tables local?
    ("C-T-T-T x10", "C-C-T-T x10"),  # attention with no convolution stage before it ...
    ("ViT-Rel x10", "C-C-T-T x10"),  # ... against attention after two of them
)


def layer_reach(row: dict, measure: str = "table", layer: int | None = 0) -> float:
    """How far a run's attention reaches (``distance_ratio``, mean over heads): ``measure`` is ``"table"``
    or ``"attention"`` (``+ "_init"`` before training); ``layer`` indexes the run's relative-attention
    layers (0: the first), None averages over all of them."""
    layers = row["layers"] if layer is None else [row["layers"][layer]]
    kind, _, init = measure.partition("_")
    key = f"{kind}_ratio" + ("_init" if init else "")
    return sum(sum(x[key]) / len(x[key]) for x in layers) / len(layers)


def inside_summary(record: dict) -> dict:
    """The record as 95% intervals over seeds (``coatlib.studies.stats``).

    ``variants``: per variant, the test accuracy (with the test set's binomial noise) and how far the
    first attention layer and all attention layers reach, from the table alone and from the actual
    attention, before and after training. ``comparisons``: for each pair of ``INSIDE_COMPARISONS`` and
    each measure of the first layer (table, attention), the difference ``a - b`` (negative: ``a`` more
    local) with Welch's interval and a Holm correction over all of them.
    """
    variants = {}
    for v in record["settings"]["variants"]:
        rows = [r for r in record["results"] if r["variant"] == v["name"]]
        if len(rows) < 2:
            continue
        acc = [r["test_acc"] for r in rows]
        entry = {
            "layout": v["layout"],
            "seeds": len(rows),
            "params": rows[0]["params"],
            "test_acc": stats.interval(acc, [stats.binomial_var(a, r["test_images"]) for a, r in zip(acc, rows)]),
        }
        if rows[0]["layers"]:
            entry["first_layer"] = rows[0]["layers"][0]["layer"]
            for measure in ("table", "attention", "table_init", "attention_init"):
                entry[f"first_{measure}"] = stats.interval([layer_reach(r, measure, 0) for r in rows])
                entry[f"all_{measure}"] = stats.interval([layer_reach(r, measure, None) for r in rows])
            entry["table_spread"] = stats.interval(
                [
                    sum(sum(x["table_spread"]) / len(x["table_spread"]) for x in r["layers"]) / len(r["layers"])
                    for r in rows
                ]
            )
        variants[v["name"]] = entry
    comparisons = []
    for a, b in INSIDE_COMPARISONS:
        if a not in variants or b not in variants:
            continue
        for measure in ("table", "attention"):
            values = [[layer_reach(r, measure, 0) for r in record["results"] if r["variant"] == n] for n in (a, b)]
            comparisons.append({"a": a, "b": b, "measure": measure, "difference": stats.difference(*values)})
    survives = stats.holm([c["difference"].p for c in comparisons])
    for c, keep in zip(comparisons, survives):
        c["holm"] = keep
    return {"variants": variants, "comparisons": comparisons}


def _workers(text: str) -> int:
    """``--workers``: an int >= 1 (argparse reports the error with the option's name)."""
    try:
        return check_workers(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1 (processes training at once), got {text!r}") from None


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m coatlib.experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    q = sub.add_parser("layouts", help="the layout study of the paper's section 2.2, real world against ideal world")
    size = q.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the whole path at toy size, seconds")
    size.add_argument("--full", action="store_true", help="the GPU preset: wider models, longer runs")
    q.add_argument("--workers", type=_workers, default=1, help="processes training at once, >= 1 (2 on a 2-core CPU)")
    q.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    q.add_argument("--out", type=Path, default=Path("coatlib-results"), help="folder for the record and images")
    q.add_argument(
        "--update-artefact",
        action="store_true",
        help="copy the finished record into coatlib/artefacts/ (a source checkout), where the chapter reads it",
    )
    q.add_argument(
        "--earlier",
        type=Path,
        action="append",
        default=[],
        help="the record of an abandoned attempt, kept in the new record's earlier_pilots (repeatable)",
    )
    q.add_argument("--quiet", action="store_true")
    q = sub.add_parser("inside", help="the models of the chapter 'Inside a trained CoAtNet'")
    q.add_argument("--quick", action="store_true", help="the whole path at toy size, seconds a run")
    q.add_argument("--workers", type=_workers, default=1, help="processes training at once, >= 1 (2 on a 2-core CPU)")
    q.add_argument("--out", type=Path, default=INSIDE_OUT, help="folder for inside.json and the weights")
    q.add_argument(
        "--update-artefact",
        action="store_true",
        help="copy the finished record (and the weights the chapter loads) into coatlib/artefacts/inside_coatnet/",
    )
    q.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    command = "python -m coatlib.experiments " + shlex.join(argv)
    if args.experiment == "inside":
        try:
            result = inside(args.out, quick=args.quick, workers=args.workers, progress=not args.quiet, command=command)
            print(f"wrote {args.out / 'inside.json'}")
            if args.update_artefact:
                print(f"copied to {update_inside_artefact(args.out)}")
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        return result

    preset = "quick" if args.quick else "full" if args.full else "cpu"
    try:
        _results_folder(args.out)
        record = layouts.layout_study(
            preset,
            args.out,
            workers=args.workers,
            device=args.device,
            progress=not args.quiet,
            command=command,
            earlier=args.earlier,
        )
    except layouts.GateFailed as e:
        raise SystemExit(f"the pilot gate did not pass ({e}); the pilots are in {args.out}") from None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    path = args.out / f"layout_study_{preset}.json"
    print(f"wrote {path}")
    if args.update_artefact:
        target = layouts.ARTEFACTS / path.name
        shutil.copyfile(path, target)
        print(f"copied to {target}")
    return record


if __name__ == "__main__":
    main()
