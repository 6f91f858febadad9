"""coatlib.experiments: the layout study (a data-size sweep), the models of chapter 5c, their command line."""

import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch

import coatlib.experiments
from coatlib.experiments import (
    FULL,
    PAPER_ORDER,
    SWEEP,
    check_sweep_settings,
    chosen_lrs,
    layout_sweep,
    main,
    sweep_model,
    sweep_models,
    sweep_results,
    sweep_summary,
)
from coatlib.flops import count_params
from coatlib.models.coatnet import CONFIGS, CoAtNet, CoAtNetConfig

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "layout_sweep.schema.json").read_text())


def test_layout_sweep_quick_runs_end_to_end_writes_valid_json_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep.json"
    record = main(["layouts", "--quick", "--out", str(out), "--quiet"])
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    jsonschema.validate(record, SCHEMA)
    assert record == json.loads(out.read_text())
    assert record["command"] == f"python -m coatlib.experiments layouts --quick --out {out} --quiet"
    s = record["settings"]
    sweep = [r for r in record["runs"] if r["kind"] == "sweep"]
    # every layout x size x seed, on the task and on the real photos, once
    expected = {
        (layout, data["data"], size, seed)
        for data in (s["task"], s["real"])
        for size in data.get("sizes", s["sizes"])
        for seed in s["seeds"]
        for layout in PAPER_ORDER
    }
    assert sorted((r["layout"], r["data"], r["size"], r["seed"]) for r in sweep) == sorted(expected)
    # the learning-rate sweep: every rate of the grid for every layout, then each layout's best is used
    assert len([r for r in record["runs"] if r["kind"] == "lr"]) == len(PAPER_ORDER) * len(s["lr_grid"])
    assert record["lr"] == chosen_lrs(record)
    assert all(r["lr"] == record["lr"][r["layout"]] for r in sweep)
    # at one data size every layout gets the same number of optimiser steps
    for size in s["sizes"]:
        assert len({r["steps"] for r in sweep if r["size"] == size and r["data"] == s["task"]["data"]}) == 1
    for r in sweep:
        assert len(r["train_loss_curve"]) == r["epochs"] and math.isfinite(r["train_loss"])
        assert (r["test_acc"] * s["test_size"]) % 1 == 0 or r["data"] == s["real"]["data"]
    # started again: nothing is trained twice
    monkeypatch.setattr(coatlib.experiments, "run_one", lambda job: pytest.fail(f"trained again: {job['layout']}"))
    assert main(["layouts", "--quick", "--out", str(out), "--quiet"])["runs"] == record["runs"]


def test_layout_sweep_refuses_a_file_with_other_settings(tmp_path):
    out = tmp_path / "sweep.json"
    out.write_text(json.dumps({"preset": "cpu", "settings": {"sizes": [1]}, "runs": []}))
    with pytest.raises(ValueError, match="other settings .* delete it, or pass another --out"):
        layout_sweep("quick", out)


def test_committed_sweep_is_valid_and_has_the_issues_design():
    record = sweep_results()
    jsonschema.validate(record, SCHEMA)
    s = record["settings"]
    assert record["preset"] == "cpu" and s == json.loads(json.dumps(SWEEP))
    assert len(s["sizes"]) >= 4 and max(s["sizes"]) >= 32 * min(s["sizes"]) and len(s["seeds"]) >= 3
    assert s["image_size"] // 16 >= 8  # S3 and ViT-Rel see at least 8x8 maps
    assert s["epochs"][s["sizes"].index(max(s["sizes"]))] >= 2  # the largest set is seen several times
    rows = sweep_summary(record)
    assert {r["seeds"] for r in rows} == {len(s["seeds"])}
    assert len(rows) == len(PAPER_ORDER) * (len(s["sizes"]) + len(s["real"]["sizes"]))
    params = [m["params"] for m in record["models"].values()]
    assert max(params) <= 1.1 * min(params)


def test_the_gpu_preset_runs_and_matches_its_sizes_too():
    check_sweep_settings(json.loads(json.dumps(FULL)))
    params = [m["params"] for m in sweep_models(FULL).values()]
    assert max(params) <= 1.1 * min(params)
    assert len(FULL["sizes"]) >= 4 and max(FULL["sizes"]) >= 32 * min(FULL["sizes"])


def test_matched_sizes_are_within_ten_percent_and_only_the_last_width_changes():
    models = sweep_models(SWEEP)
    params = {layout: m["params"] for layout, m in models.items()}
    assert max(params.values()) <= 1.1 * min(params.values()), params
    base = CONFIGS[SWEEP["model"]]
    for layout, m in models.items():
        widths = m["config"]["widths"]
        last = 2 if layout == "ViT-Rel" else 3
        assert [w for i, w in enumerate(widths) if i != last] == [w for i, w in enumerate(base.widths) if i != last]
        model = CoAtNet(
            CoAtNetConfig(**{**m["config"], "widths": tuple(widths)}), num_classes=2, image_size=128, layout=layout
        )
        assert count_params(model) == m["params"]
    # without matching, C-C-C-C would be 16% smaller than C-T-T-T
    plain = [count_params(CoAtNet(base, num_classes=2, image_size=128, layout=x)) for x in ("C-C-C-C", "C-T-T-T")]
    assert plain[1] > 1.1 * plain[0]


def test_summary_is_mean_and_standard_error_over_seeds():
    runs = [
        {
            "kind": "sweep",
            "data": "d",
            "size": 10,
            "layout": "C-C-T-T",
            "seed": seed,
            "test_acc": acc,
            "train_loss": loss,
        }
        for seed, acc, loss in [(0, 0.5, 1.0), (1, 0.7, 2.0), (2, 0.9, 3.0)]
    ] + [{"kind": "lr", "data": "d", "size": 10, "layout": "C-C-T-T", "seed": 0, "val_acc": 1.0}]
    (row,) = sweep_summary({"runs": runs})
    assert (row["layout"], row["size"], row["seeds"]) == ("C-C-T-T", 10, 3)
    assert row["test_acc"] == pytest.approx(0.7) and row["test_acc_se"] == pytest.approx(0.2 / 3**0.5)
    assert row["train_loss"] == pytest.approx(2.0) and row["train_loss_se"] == pytest.approx(1 / 3**0.5)


def test_chosen_rate_is_the_most_accurate_on_validation_else_the_best_fitting():
    def run(layout, lr, acc, loss, train_loss=0.5):
        return {"kind": "lr", "layout": layout, "lr": lr, "val_acc": acc, "val_loss": loss, "train_loss": train_loss}

    # 400 validation images: above chance means above 0.5 + 2 * 0.025 = 0.55
    runs = [run(x, 1e-3, 0.6, 0.5) for x in PAPER_ORDER] + [run(x, 2e-3, 0.6, 0.4) for x in PAPER_ORDER[2:]]
    runs += [run("ViT-Rel", 2e-3, 0.7, 0.9), run("C-C-C-C", 2e-3, 0.56, 0.3)]
    record = {"settings": {"lr_grid": [1e-3, 2e-3], "val_size": 400}, "runs": runs}
    chosen = chosen_lrs(record)
    assert chosen["ViT-Rel"] == 2e-3  # more accurate, despite a higher loss
    assert chosen["C-C-C-C"] == 1e-3  # more accurate
    assert chosen["C-C-T-T"] == 2e-3  # equally accurate, lower loss
    # no rate above chance on validation: the one with the lowest training loss
    record["runs"] = [run(x, 1e-3, 0.54, 0.69, 0.6) for x in PAPER_ORDER] + [
        run(x, 2e-3, 0.53, 0.69, 0.3) for x in PAPER_ORDER
    ]
    assert set(chosen_lrs(record).values()) == {2e-3}
    record["runs"] = record["runs"][1:]
    with pytest.raises(ValueError, match="learning-rate sweep of ViT-Rel is unfinished"):
        chosen_lrs(record)


def test_sweep_model_rebuilds_each_layout_from_the_record():
    record = {"settings": json.loads(json.dumps(SWEEP)), "models": sweep_models(SWEEP)}
    for layout in PAPER_ORDER:
        model = sweep_model(record, layout)
        assert model.layout == layout and count_params(model) == record["models"][layout]["params"]
        assert model.image_size == (128, 128)
    assert sweep_model(record, "C-C-C-C").num_features == 144 and sweep_model(record, "C-C-T-T").num_features == 128


def test_inside_quick_trains_saves_and_loads_back(tmp_path, capsys):
    """The whole path of the chapter's experiment at toy size: train, save in float16, load back."""
    from coatlib.experiments import INSIDE_QUICK, initial_model, inside_model, inside_results
    from coatlib.inspection import bias_tables

    result = main(["inside", "--quick", "--out", str(tmp_path), "--quiet"])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'inside.json'}"
    record = inside_results(tmp_path)
    assert record["command"] == f"python -m coatlib.experiments inside --quick --out {tmp_path} --quiet"
    assert record["versions"]["torch"] and record["settings"]["image_size"] == INSIDE_QUICK["image_size"]
    assert [(r["layout"], r["seed"]) for r in record["results"]] == [("C-C-T-T", 0), ("C-C-C-C", 0)]
    assert record["results"] == json.loads(json.dumps(result["results"]))
    trained = inside_model(record, "C-C-T-T", 0, folder=tmp_path)
    start = initial_model(record, "C-C-T-T", 0)
    assert not trained.training and trained.stages[2].blocks[0].attn.map_size == (2, 2)
    assert not torch.equal(bias_tables(trained, 3)[0], bias_tables(start, 3)[0])
    with pytest.raises(ValueError, match="no C-C-C-C model of seed 1"):
        inside_model(record, "C-C-C-C", 1, folder=tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m coatlib.experiments inside"):
        inside_results(tmp_path / "missing")
