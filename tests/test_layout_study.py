"""coatlib.studies.layouts and layouts_run: the study's runner, its pilots and gate, and its record."""

import json
import math
import shutil

import pytest
import torch

import coatlib.studies.layouts as layouts
import coatlib.studies.layouts_run as layouts_run
from coatlib.flops import count_params
from coatlib.studies.command import main
from coatlib.studies.layouts import (
    CPU,
    FULL,
    LAYOUTS,
    QUICK,
    study_model,
    study_models,
    study_table,
    study_verdicts,
)
from coatlib.studies.layouts_run import chosen_lrs, gate, layout_study


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The whole study at toy size, through the command line, once for this module."""
    out = tmp_path_factory.mktemp("study")
    record = main(["layouts", "--quick", "--out", str(out), "--quiet"])
    return out, record


def test_quick_study_runs_every_stage_and_records_it(quick):
    out, _ = quick
    record = json.loads((out / "layout_study_quick.json").read_text())  # what the chapter reads: the file
    assert record["command"] == f"python -m coatlib.studies layouts --quick --out {out} --quiet"
    assert record["versions"]["torch"] and record["hardware"]["workers"] == 1
    s = record["settings"]
    kinds = [r["kind"] for r in record["runs"]]
    # the rate pilot (every layout x rate, its own seed) and the amp pilot, then the study
    assert kinds.count("lr") == 5 * len(s["lr_grid"]) and kinds.count("amp") == 1
    assert {r["seed"] for r in record["runs"] if r["kind"] == "lr"} == {s["lr_seed"]} not in s["seeds"]
    study = [r for r in record["runs"] if r["kind"] == "study"]
    expected = {
        (layout, task, world, size, seed)
        for seed in s["seeds"]
        for layout in LAYOUTS
        for task, world, size in [("task", "ideal", s["steps"] * s["batch_size"])]
        + [("task", "real", n) for n in s["sizes"]]
        + [("local", "real", s["local_size"])]
    }
    assert sorted((r["layout"], r["task"], r["world"], r["size"], r["seed"]) for r in study) == sorted(expected)
    for layout in LAYOUTS:  # the chosen rate: the grid's rate whose pilot run ended with the lowest online loss
        pilots = {r["lr"]: r["online_loss"] for r in record["runs"] if r["kind"] == "lr" and r["layout"] == layout}
        assert sorted(pilots) == sorted(s["lr_grid"]) and pilots[record["lr"][layout]] == min(pilots.values())
    for r in study:
        assert r["lr"] == record["lr"][r["layout"]] and r["amp"] == s["amp"]  # one rate in every regime
        assert r["steps"] == (s["local_steps"] if r["task"] == "local" else s["steps"])  # the same steps
        assert len(r["loss_curve"]) == min(30, r["steps"]) and math.isfinite(r["online_loss"])
        assert r["test_images"] == s["test_size"] and (r["test_acc"] * s["test_size"]) % 1 == 0
    assert record["gate"]["passed"] in (True, False) and "baseline" in record
    assert (out / "layout_study_quick_images").is_dir()


def test_restarted_study_trains_nothing_again(quick, monkeypatch):
    out, record = quick
    monkeypatch.setattr(layouts_run, "run_one", lambda job: pytest.fail(f"trained again: {job['layout']}"))
    monkeypatch.setattr(layouts_run, "bag_of_features", lambda *a: pytest.fail("baseline again"))
    assert layout_study("quick", out)["runs"] == record["runs"]


def test_refuses_a_record_with_other_settings(tmp_path):
    (tmp_path / "layout_study_quick.json").write_text(json.dumps({"settings": {"steps": 1}, "runs": []}))
    with pytest.raises(ValueError, match="other settings: delete it, or pass another --out"):
        layout_study("quick", tmp_path)


def test_a_failed_gate_stops_before_the_rest_of_the_study_and_keeps_the_pilots(quick, tmp_path, monkeypatch):
    out, _ = quick
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "layout_study_quick.json"
    record = json.loads(path.read_text())
    first = record["settings"]["seeds"][0]
    gating = [r for r in record["runs"] if r["kind"] == "study" and r["world"] == "ideal" and r["seed"] == first]
    record["runs"] = [r for r in record["runs"] if r["kind"] != "study"] + gating
    record["settings"]["require_gate"] = True
    path.write_text(json.dumps(record))
    monkeypatch.setitem(layouts.PRESETS, "quick", {**QUICK, "require_gate": True})
    monkeypatch.setattr(layouts_run, "gate", lambda r: {"passed": False, "reason": "no separation"})
    monkeypatch.setattr(layouts_run, "run_one", lambda job: pytest.fail(f"trained past the gate: {job}"))
    with pytest.raises(SystemExit, match="pilot gate did not pass .no separation.; the pilots are in"):
        main(["layouts", "--quick", "--out", str(tmp_path), "--quiet"])
    kept = json.loads(path.read_text())
    assert kept["runs"] == record["runs"] and kept["gate"]["passed"] is False


def _pilot_record(losses: dict[str, tuple[float, float]]) -> dict:
    """Rate-pilot runs (seed 0, two rates) and the study's first ideal-world seed (1), per layout."""
    runs = []
    for layout, (seed0, seed1) in losses.items():
        base = {"layout": layout, "amp": "bf16", "world": "ideal"}
        runs.append({**base, "kind": "lr", "seed": 0, "lr": 1e-3, "online_loss": seed0})
        runs.append({**base, "kind": "lr", "seed": 0, "lr": 2e-3, "online_loss": seed0 + 0.3})
        runs.append({**base, "kind": "study", "seed": 1, "lr": 1e-3, "online_loss": seed1})
        runs.append({**base, "kind": "study", "seed": 1, "lr": 2e-3, "online_loss": 0.0})  # another rate: not read
    return {"settings": {"lr_grid": [1e-3, 2e-3], "amp": "bf16", "lr_seed": 0, "seeds": [1, 2, 3]}, "runs": runs}


def test_rate_is_the_lowest_online_loss_and_the_gate_needs_conv_against_attention_separated():
    separated = _pilot_record(
        {
            "ViT-Rel": (4.50, 4.51),
            "C-C-C-C": (4.10, 4.15),
            "C-C-C-T": (4.49, 4.50),
            "C-C-T-T": (4.2, 4.5),
            "C-T-T-T": (4.50, 4.50),
        }
    )
    separated["lr"] = chosen_lrs(separated)
    assert separated["lr"] == dict.fromkeys(LAYOUTS, 1e-3)
    g = gate(separated)
    assert g["passed"] and ["ViT-Rel", "C-C-C-C"] in g["separated"] and ["C-C-C-C", "C-C-T-T"] not in g["separated"]
    # spreads as large as the gaps: nothing is separated
    noisy = _pilot_record({layout: (4.1 + 0.1 * i, 4.6) for i, layout in enumerate(LAYOUTS)})
    noisy["lr"] = chosen_lrs(noisy)
    g = gate(noisy)
    assert not g["passed"] and g["separated"] == [] and "change the task or the budget" in g["reason"]
    # conv against conv only does not pass
    conv_only = _pilot_record(  # C-C-C-C and C-C-C-T apart, the attention layouts too noisy to tell
        {
            "ViT-Rel": (4.0, 4.5),
            "C-C-C-C": (4.0, 4.0),
            "C-C-C-T": (4.5, 4.5),
            "C-C-T-T": (4.25, 4.25),
            "C-T-T-T": (4.0, 4.5),
        }
    )
    conv_only["lr"] = chosen_lrs(conv_only)
    assert not gate(conv_only)["passed"]
    with pytest.raises(ValueError, match="unfinished"):
        chosen_lrs({"settings": {"lr_grid": [1e-3, 2e-3]}, "runs": separated["runs"][:1]})


def _study_record(acc: dict[str, list[float]], online: dict[str, list[float]]) -> dict:
    s = {**json.loads(json.dumps(QUICK)), "sizes": [16], "seeds": [0, 1, 2]}
    runs = []
    for layout in LAYOUTS:
        for seed in range(3):
            base = {"kind": "study", "layout": layout, "seed": seed, "test_images": 2000, "train_loss": 1.0}
            runs.append(
                {
                    **base,
                    "task": "task",
                    "world": "real",
                    "size": 16,
                    "test_acc": acc[layout][seed],
                    "online_loss": 1.0,
                    "online_loss_var": 0.0,
                }
            )
            runs.append(
                {
                    **base,
                    "task": "local",
                    "world": "real",
                    "size": s["local_size"],
                    "test_acc": 0.5,
                    "online_loss": 1.0,
                    "online_loss_var": 0.0,
                }
            )
            runs.append(
                {
                    **base,
                    "task": "task",
                    "world": "ideal",
                    "size": s["steps"] * s["batch_size"],
                    "test_acc": 0.1,
                    "online_loss": online[layout][seed],
                    "online_loss_var": 1e-6,
                }
            )
    return {"settings": s, "runs": runs}


def test_table_and_verdicts_read_known_numbers():
    acc = {
        "ViT-Rel": [0.05, 0.05, 0.05],
        "C-C-C-C": [0.40, 0.42, 0.41],
        "C-C-C-T": [0.30, 0.31, 0.29],
        "C-C-T-T": [0.20, 0.21, 0.19],
        "C-T-T-T": [0.10, 0.11, 0.09],
    }
    online = {
        "ViT-Rel": [4.5, 4.5, 4.5],
        "C-C-C-C": [1.0, 1.1, 1.05],
        "C-C-C-T": [2.0, 2.1, 2.05],
        "C-C-T-T": [3.0, 3.1, 3.05],
        "C-T-T-T": [4.0, 4.1, 4.05],
    }
    record = _study_record(acc, online)
    rows = {(r["task"], r["world"], r["layout"]): r for r in study_table(record)}
    assert rows[("task", "real", "C-C-C-C")]["test_acc"].mean == pytest.approx(0.41)
    assert rows[("task", "real", "ViT-Rel")]["test_acc"].se == pytest.approx((0.05 * 0.95 / 2000) ** 0.5)
    assert rows[("task", "ideal", "C-T-T-T")]["online_loss"].mean == pytest.approx(4.05)
    v = study_verdicts(record)
    general = {(r.ahead, r.behind): r.verdict for r in v["generalization task 16"]}
    assert general[("C-C-C-C", "C-C-T-T")] == "agrees" and general[("C-C-C-C", "C-C-C-T")] == "differs"
    capacity = {(r.ahead, r.behind): r.verdict for r in v["capacity"]}
    # lower online loss is more capacity: the conv-first layouts fit best here, the paper's claim reversed
    assert capacity[("C-C-T-T", "C-C-C-C")] == "reversed" and capacity[("ViT-Rel", "C-C-C-T")] == "reversed"
    assert capacity[("C-C-T-T", "ViT-Rel")] == "agrees"
    assert {r.verdict for r in v["generalization local 16"]} == {"undecided"}


@pytest.mark.parametrize("preset", [CPU, FULL])
def test_matched_sizes_within_ten_percent_only_the_last_width_changing(preset):
    settings = json.loads(json.dumps(preset))
    models = study_models(settings)
    params = [m["params"] for m in models.values()]
    assert max(params) / min(params) < 1.10
    base = layouts.base_config(settings)
    for layout, m in models.items():
        widths = m["config"]["widths"]
        last = 2 if layout == "ViT-Rel" else 3
        assert [w for i, w in enumerate(widths) if i != last] == [w for i, w in enumerate(base.widths) if i != last]
    assert settings["image_size"] // 16 >= 8  # S3 and ViT-Rel see at least 8x8 maps


@pytest.mark.parametrize(
    "preset, seen, passes",
    [(CPU, 24_000, (32, 8, 2)), (FULL, 128_000, (64, 16, 4))],  # the numbers the presets' comments promise
)
def test_presets_see_the_images_and_passes_they_promise(preset, seen, passes):
    assert preset["steps"] * preset["batch_size"] == seen
    assert [seen / n for n in preset["sizes"]] == list(passes)  # whole passes over each fixed set, 16x apart
    assert len(preset["seeds"]) >= 3 and len(preset["lr_grid"]) >= 3


def test_gpu_preset_models_take_its_batches_and_match_in_size():
    """The GPU preset runs nowhere here: build its five models on the meta device (shapes, no memory),
    at its image size, and run one of its batches through each."""
    settings = json.loads(json.dumps(FULL))
    with torch.device("meta"):
        models = {
            layout: study_model({"models": study_models(settings), "settings": settings}, layout) for layout in LAYOUTS
        }
        params = {layout: count_params(model) for layout, model in models.items()}
        for layout, model in models.items():
            out = model(torch.empty(settings["batch_size"], 3, settings["image_size"], settings["image_size"]))
            assert out.shape == (256, 100), layout  # batch 256, the 100 classes of digit_pairs' pairs
    assert all(3.0e6 <= p <= 3.6e6 for p in params.values()), params  # "about 3.3M parameters"
    assert max(params.values()) / min(params.values()) < 1.10  # matched: within 10% of each other
    s3 = models["C-C-T-T"].stages[2].blocks[0].attn.map_size
    assert s3 == (8, 8)  # 128 px: S3's attention sees 8x8 maps, as the CPU preset's


def test_study_model_rebuilds_each_layout_from_the_record(quick):
    _, record = quick
    for layout in LAYOUTS:
        assert count_params(study_model(record, layout)) == record["models"][layout]["params"]


def test_default_output_is_under_the_current_directory_and_the_artefact_is_an_explicit_copy(
    quick, tmp_path, monkeypatch
):
    out, _ = quick
    monkeypatch.chdir(tmp_path)
    shutil.copytree(out, tmp_path / "coatlib-results")
    monkeypatch.setattr(layouts, "ARTEFACTS", tmp_path / "artefacts")
    (tmp_path / "artefacts").mkdir()
    main(["layouts", "--quick", "--quiet"])
    assert not (tmp_path / "artefacts" / "layout_study_quick.json").exists()
    main(["layouts", "--quick", "--quiet", "--update-artefact"])
    copied = json.loads((tmp_path / "artefacts" / "layout_study_quick.json").read_text())
    assert copied["runs"] == json.loads((tmp_path / "coatlib-results" / "layout_study_quick.json").read_text())["runs"]
