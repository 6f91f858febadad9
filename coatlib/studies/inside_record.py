"""The record of the chapter "Inside a trained CoAtNet" (``coatlib.studies.inside``): read, summarised, shipped.

``inside_results()`` reads the record that ships with coatlib (``coatlib/artefacts/inside_coatnet/``),
``inside_model`` and ``initial_model`` give a variant's model after and before training, ``inside_summary``
the record as intervals over seeds; ``update_inside_artefact`` (``--update-artefact``) copies a finished
record and the weights the chapter loads into the package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from coatlib.studies import stats
from coatlib.studies.inside import INSIDE_DIR, INSIDE_OUT, build_model
from coatlib.studies.records import read_record


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
            f"run `python -m coatlib.studies inside --out {out}` again to finish it"
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
            "or make it with `python -m coatlib.studies inside --workers 2` (about 40 minutes on 2 CPU cores)"
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
    return build_model(record["settings"], record["models"][v["layout"]]["config"], v["layout"], seed).eval()


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
