"""coatlib.experiments: the layout study runner and its command line."""

import json
import math

import pytest

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
