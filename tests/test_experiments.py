"""coatlib.experiments: the layout study runner and its command line."""

import json
import math

import pytest
import torch

from coatlib.experiments import PAPER_ORDER, layouts, main


def test_layouts_cli_trains_the_five_layouts_and_writes_json(tmp_path, capsys):
    out = tmp_path / "layouts.json"
    result = main(
        [
            "layouts",
            "--data",
            "same_different",
            "--epochs",
            "1",
            "--train-size",
            "64",
            "--test-size",
            "32",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    rows = result["results"]
    assert [r["layout"] for r in rows] == list(PAPER_ORDER)
    params = [r["params"] for r in rows]
    assert max(params) < 1.3 * min(params)  # "of similar size"
    for r in rows:
        assert r["model"] == "coatnet_pico" and math.isfinite(r["train_loss"])
        assert r["test_acc"] == r["history"]["test_acc"][-1] and (r["test_acc"] * 32) % 1 == 0  # images of 32
        assert r["train_loss"] == r["history"]["train_loss"][-1] and len(r["history"]["epoch"]) == 1
    settings = result["settings"]
    assert (settings["train_images"], settings["test_images"], settings["label_smoothing"]) == (64, 32, 0.0)
    record = json.loads(out.read_text())
    assert record["command"] == (
        "python -m coatlib.experiments layouts --data same_different --epochs 1 --train-size 64 --test-size 32 "
        f"--out {out} --quiet"
    )
    assert {"torch", "coatlib", "python"} <= set(record["versions"])
    assert record["results"] == json.loads(json.dumps(rows))


def test_unknown_layout_is_refused_before_training():
    with pytest.raises(ValueError, match="unknown layouts \\['T-T-T-T'\\]"):
        layouts(candidates=("C-C-T-T", "T-T-T-T"))


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
