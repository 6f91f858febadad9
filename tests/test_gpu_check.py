"""benchmarks/gpu_check.py, run here on the CPU at a small size: the command a GPU will run, end to end.

The CPU run uses two small models, 64 px, batch 2, no ``torch.compile`` (compiling on a CPU takes
minutes) and one timed round; on CUDA the defaults check every registered model, compiled too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def test_cpu_run_checks_every_mode_and_writes_the_table_and_json(tmp_path, timm):
    out = tmp_path / "check" / "gpu_check.json"
    small = ["--device", "cpu", "--image-size", "64", "--batch", "2", "--rounds", "1", "--fit-batch", "8"]
    result = run(*small, "--models", "coatnet_pico,resnet18", "--attention-model", "coatnet_pico", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| check | variant | result | logits diff | grads diff | note |" in result.stdout

    record = json.loads(out.read_text())
    assert record["machine"]["device"] == "cpu" and record["failed"] == 0
    rows = {(r["check"], r["variant"]): r for r in record["rows"]}
    for model in ("coatnet_pico", "resnet18", "coatnet_pico softmax=pre", "coatnet_pico softmax=post"):
        assert rows[model, "fp32"]["passed"]
        bf16 = rows[model, "bf16"]
        assert 0 < bf16["logits_diff"] <= gpu_check.TOLERANCE["bf16"]  # bfloat16 rounds: never exactly equal
        assert (model, "compiled") not in rows  # --compile is off by default on a CPU
    assert rows["fit coatnet_pico", "fp32"]["passed"] and rows["fit coatnet_pico", "bf16"]["passed"]
    speed = rows["speed coatnet_0 vs timm", "fp32"]
    assert speed["infer_images_per_s_timm"] > 0 and speed["train_coatlib_over_timm"] > 0


def test_a_model_that_fails_is_a_failed_row_and_the_check_goes_on():
    args = gpu_check.parse_args(["--device", "cpu", "--image-size", "50", "--models", "coatnet_pico"])
    (row,) = gpu_check.check_model("coatnet_pico", args)  # 50 px: the stages' maps do not divide
    assert not row["passed"] and row["variant"] == "fp32" and "Error" in row["note"]


def test_compiled_variants_are_compared_with_float32(monkeypatch):
    # torch.compile stands in for itself here (compiling on a CPU takes minutes): the rows and tolerances
    monkeypatch.setattr(torch, "compile", lambda model: model)
    args = gpu_check.parse_args(["--device", "cpu", "--image-size", "64", "--batch", "2", "--compile"])
    rows = {r["variant"]: r for r in gpu_check.check_model("coatnet_pico", args)}
    assert set(rows) == {"fp32", "bf16", "compiled", "compiled bf16"}
    assert rows["compiled"]["passed"] and rows["compiled"]["logits_diff"] == 0.0


def test_unknown_models_and_a_missing_gpu_are_refused_clearly():
    result = run("--device", "cpu", "--models", "nonet_*")
    assert result.returncode == 2 and "matches no registered model" in result.stderr
    if not torch.cuda.is_available():
        result = run("--device", "cuda")
        assert result.returncode == 2 and "use --device cpu" in result.stderr


@pytest.mark.parametrize("value, reference, expected", [(1.5, 2.0, 0.25), (2.0, 2.0, 0.0)])
def test_relative_difference(value, reference, expected):
    assert gpu_check.relative_difference(torch.tensor([value, 1.0]), torch.tensor([reference, 1.0])) == expected
