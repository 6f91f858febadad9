"""coatlib.studies.inside and inside_record: the models of chapter 5c ("Inside a trained CoAtNet") and their command."""

import json
import math

import pytest
import torch

import coatlib.studies.inside as inside_study
from coatlib.studies.command import main
from coatlib.studies.inside import INSIDE, INSIDE_DIR, INSIDE_QUICK, inside_budget
from coatlib.studies.inside_record import (
    INSIDE_COMPARISONS,
    initial_model,
    inside_model,
    inside_results,
    inside_summary,
    update_inside_artefact,
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The whole path at toy size, once: 5 variants x 2 seeds, 4 steps each, one thread."""
    out = tmp_path_factory.mktemp("inside")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = main(["inside", "--quick", "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    return out, result


def test_inside_quick_trains_measures_saves_and_loads_back(quick_run):
    out, result = quick_run
    record = inside_results(out)
    assert record["command"] == f"python -m coatlib.studies inside --quick --out {out} --quiet"
    assert record["versions"]["torch"] and record["preset"] == "quick"
    assert record["settings"] == json.loads(json.dumps(INSIDE_QUICK))
    variants = [v["name"] for v in INSIDE_QUICK["variants"]]
    assert [(r["variant"], r["seed"]) for r in record["results"]] == [(v, s) for s in (0, 1) for v in variants]
    # the quick preset by hand: 64 training crops in batches of 16 for 1 epoch = 4 steps; 64 // 2 = 32 test crops
    assert record["budget"]["steps"] == 4 and len(result["results"]) == 5 * 2
    assert not list(out.glob("*.partial"))  # every write went through a temporary file and a rename
    # matched sizes: every layout within 10% of C-C-T-T's parameters
    params = {layout: m["params"] for layout, m in record["models"].items()}
    assert all(abs(p / params["C-C-T-T"] - 1) < 0.1 for p in params.values())
    for row in record["results"]:
        assert (out / row["weights"]).is_file() and row["steps"] == 4 and len(row["loss_curve"]) == 4
        assert row["test_images"] == 32 and (row["test_acc"] * 32).is_integer()  # a count of correct crops
        assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
        assert row["params"] == params[row["layout"]]  # the trained model is the matched one
        attention = row["layout"] != "C-C-C-C"
        assert bool(row["layers"]) == attention and (row["erf"] is None) == (row["layout"] == "ViT-Rel")
        for layer in row["layers"]:  # one number per head, before and after training
            heads = len(layer["table_ratio"])
            assert heads > 1 and all(len(layer[k]) == heads for k in ("attention_ratio", "table_ratio_init"))
            assert all(0 < x < 2 for x in layer["table_ratio"] + layer["attention_ratio"])
    trained = inside_model(record, "C-C-T-T x10", 1, folder=out)
    start = initial_model(record, "C-C-T-T x10", 1)
    assert not trained.training and trained.stages[2].blocks[0].attn.map_size == (4, 4)  # 64 px: S3 sees 4x4
    t1, t0 = trained.stages[2].blocks[0].attn.relative_bias_table, start.stages[2].blocks[0].attn.relative_bias_table
    assert not torch.equal(t1, t0)
    with pytest.raises(ValueError, match="no variant 'C-C-T-T x3'"):
        initial_model(record, "C-C-T-T x3", 0)
    with pytest.raises(ValueError, match="no C-C-C-C model of seed 7"):
        inside_model(record, "C-C-C-C", 7, folder=out)
    with pytest.raises(FileNotFoundError, match="python -m coatlib.studies inside"):
        inside_results(out / "missing")


def test_inside_summary_gives_intervals_over_seeds(quick_run):
    summary = inside_summary(inside_results(quick_run[0]))
    assert set(summary["variants"]) == {v["name"] for v in INSIDE_QUICK["variants"]}
    cctt = summary["variants"]["C-C-T-T x10"]
    assert cctt["seeds"] == 2 and cctt["first_layer"] == "S3.0"
    assert summary["variants"]["C-T-T-T x10"]["first_layer"] == "S2.0"  # its first attention stage
    assert cctt["first_table"].low <= cctt["first_table"].mean <= cctt["first_table"].high
    assert "first_table" not in summary["variants"]["C-C-C-C"]  # no attention
    pairs = [(c["a"], c["b"], c["measure"]) for c in summary["comparisons"]]
    assert pairs == [(a, b, m) for a, b in INSIDE_COMPARISONS for m in ("table", "attention")]
    assert all(isinstance(c["holm"], bool) for c in summary["comparisons"])


def test_inside_resumes_and_refuses_other_settings(quick_run, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    out.mkdir()
    record = json.loads((quick_run[0] / "inside.json").read_text())
    dropped = record["results"].pop()  # as if interrupted before the last run
    (out / "inside.json").write_text(json.dumps(record))
    ran = []
    monkeypatch.setattr(inside_study, "inside_run", lambda job: ran.append(job) or dropped)
    inside_study.inside(out, quick=True)
    assert [(j["variant"]["name"], j["seed"]) for j in ran] == [(dropped["variant"], dropped["seed"])]
    assert inside_results(out)["results"][-1] == dropped
    record["settings"]["epochs"] = 2
    (out / "inside.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="holds a run with other settings"):
        inside_study.inside(out, quick=True)


def test_inside_never_writes_into_the_package(capsys):
    before = sorted(p.name for p in INSIDE_DIR.iterdir())
    with pytest.raises(SystemExit, match="inside the coatlib package"):
        main(["inside", "--quick", "--out", str(INSIDE_DIR), "--quiet"])
    with pytest.raises(SystemExit, match="inside the coatlib package"):
        main(["inside", "--quick", "--out", str(INSIDE_DIR.parent.parent / "results"), "--quiet"])
    assert sorted(p.name for p in INSIDE_DIR.iterdir()) == before


def test_update_artefact_copies_a_finished_record_and_the_chapters_weights(quick_run, tmp_path):
    out = quick_run[0]
    target = tmp_path / "artefact"
    target.mkdir()
    (target / "cctt_seed1.pt").write_bytes(b"an older run")
    update_inside_artefact(out, target)
    kept = sorted(p.name for p in target.iterdir())
    want = sorted(r["weights"] for r in inside_results(out)["results"] if r["seed"] == 0) + ["inside.json"]
    assert kept == sorted(want)
    record = inside_results(target)
    assert inside_model(record, "ViT-Rel x10", 0, folder=target).stages[0].name == "S1-S4"
    with pytest.raises(FileNotFoundError, match="keeps the weights of seeds \\[0\\]"):
        inside_model(record, "ViT-Rel x10", 1, folder=target)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    record["results"] = record["results"][:3]
    (unfinished / "inside.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="unfinished \\(7 runs missing"):
        update_inside_artefact(unfinished, tmp_path / "other")


def test_inside_budget_is_the_argument_of_the_docstring():
    """The default: 1,500 steps at a peak of 2e-3 sum to 1.5 (chapter 3's plain run: 1.3), the tables'
    x10 budget to 15 (chapter 3's x10 run: 13); the first version of the chapter had 0.17."""
    budget = inside_budget(json.loads(json.dumps(INSIDE)))
    assert budget["steps"] == 1500 and budget["warmup_steps"] == 75
    assert budget["summed_lr"] == pytest.approx(1.5, abs=0.01)
    assert budget["table_budget"]["C-C-T-T x10"] == pytest.approx(15, abs=0.1)
    old = {**INSIDE, "epochs": 3, "batch_size": 64, "lr": 3e-3, "warmup_epochs": 0.5}
    assert inside_budget(json.loads(json.dumps(old)))["summed_lr"] == pytest.approx(0.17, abs=0.01)
