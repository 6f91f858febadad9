"""benchmarks/chapter3_bias.py (chapter 3's bias experiment) and the JSON it wrote, which the chapter reads."""

import importlib.util
import json
from importlib.resources import files
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["no bias", "pre-softmax", "post-softmax", "pre-softmax, table lr x 10"]


def load_script():
    spec = importlib.util.spec_from_file_location("chapter3_bias", ROOT / "benchmarks" / "chapter3_bias.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_structure(result, seeds=None):
    for key in ("what", "command", "date", "versions", "settings", "variants", "runs"):
        assert key in result, key
    assert {"torch", "numpy", "coatlib", "python"} <= set(result["versions"])
    settings = result["settings"]
    epochs, seeds = settings["epochs"], seeds or settings["seeds"]
    assert result["variants"] == VARIANTS and list(result["runs"]) == VARIANTS
    for variant in VARIANTS:
        runs = result["runs"][variant]
        assert sorted(runs) == sorted(str(s) for s in seeds), variant  # one run per seed and variant
        for run in runs.values():
            assert len(run["train_loss"]) == len(run["test_acc"]) == epochs
            assert all(0.0 <= a <= 1.0 for a in run["test_acc"])  # fractions, not percentages
            assert run["seconds"] > 0
            assert len(run["tables"]) == settings["depth"]


def test_quick_run_writes_the_json(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "bias.json"
    try:
        returned = load_script().main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["settings"]["quick"] and result["command"].endswith(f"--quick --out {out}")
    check_structure(result, seeds=[0, 1, 2])
    runs = result["runs"]
    assert all(r["tables"][0]["range"] == [0.0] for r in runs["no bias"].values())  # frozen at zero
    # the no-bias, pre- and post-softmax networks of a seed start from the same weights; "lr x 10"
    # moves the tables further than plain pre-softmax from the same start
    for seed in "012":
        fast, slow = runs["pre-softmax, table lr x 10"][seed], runs["pre-softmax"][seed]
        assert fast["tables"][0]["range"][0] > slow["tables"][0]["range"][0]


def test_table_learning_rate_factor_is_exact():
    """With factor 10 the tables move exactly 10 times as far in one AdamW step; nothing else changes."""
    script = load_script()
    steps = {}
    for factor in (1, 10):
        torch.manual_seed(0)
        model = script.TinyRelativeNet(dim=8)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        model(torch.randn(4, 3, 16, 16)).square().mean().backward()
        with script.tables_learning_rate_times(model, factor):
            optimizer.step()
        steps[factor] = {n: p.detach() - start[n] for n, p in model.named_parameters()}
    for name, step in steps[10].items():
        expected = 10 * steps[1][name] if name.endswith("relative_bias_table") else steps[1][name]
        torch.testing.assert_close(step, expected)


def test_committed_result_has_three_seeds_per_variant():
    path = files("coatlib") / "artefacts" / "chapter3_bias.json"
    result = json.loads(path.read_text())
    check_structure(result)
    assert not result["settings"]["quick"]
    for variant in VARIANTS:
        assert len(result["runs"][variant]) >= 3, variant
    assert not (ROOT / "results" / "chapter3_bias_20_epochs.json").exists()  # replaced by the artefact


@pytest.mark.parametrize(
    "path", ["README.md", "notebooks/03_relative_attention.ipynb", "notebooks/03_2_bias_experiment.ipynb"]
)
def test_no_reference_to_the_old_single_seed_file(path):
    assert "chapter3_bias_20_epochs" not in (ROOT / path).read_text(encoding="utf-8")
