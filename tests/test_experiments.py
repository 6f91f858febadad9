"""coatlib.experiments: the models of chapter 5c and the command line."""

import json

import pytest
import torch

from coatlib.experiments import main


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
