"""The chapter "A CoAtNet trained on ImageNet" (notebooks/05b_trained_coatnet.ipynb): its cells that
need timm's weights, run offline with a local checkpoint; the `book` workflow that runs them with the
real weights; the per-model table of timm's rw models; the ImageNet class names it prints.

Nothing here downloads: the checkpoint is a coatlib model with random weights, passed to the chapter
through the environment variable it reads (``COATLIB_05B_CHECKPOINTS``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

import coatlib
from coatlib.artefacts import imagenet_classes
from coatlib.models import coatnet_rw
from coatlib.models.coatnet_rw import RW_CONFIGS, per_model_table

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "05b_trained_coatnet.ipynb"
OFFLINE = "Not run here: no ImageNet weights"  # what a cell that needs the weights prints without them
DOWNLOADS = re.compile(r"create_model\(\s*\"(\w+)\",\s*pretrained=True")


def weight_cells(nb) -> list:
    """The code cells that run only with the weights: ``if needs_weights("..."):``."""
    return [c for c in nb.cells if c.cell_type == "code" and re.search(r"^if needs_weights\(", c.source, re.M)]


def text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.outputs)


def test_offline_each_weight_cell_says_what_it_would_show():
    """The committed outputs (what nbval compares and an offline build shows)."""
    cells = weight_cells(nbformat.read(CHAPTER, as_version=4))
    assert len(cells) == 4
    for cell in cells:
        does = re.search(r'needs_weights\("([^"]+)"\)', cell.source)[1]
        assert text(cell) == f"{OFFLINE} (their download needs a network).\nWith them, this cell {does}.\n"
        assert not images(cell)


def test_weight_cells_run_end_to_end_with_a_local_checkpoint(tmp_path, monkeypatch):
    """The whole chapter in a fresh kernel, with a coatlib coatnet_0_rw of random weights where the
    chapter looks for a local file: every weight cell runs and shows its result."""
    nbclient = pytest.importorskip("nbclient")
    torch.manual_seed(0)
    state = coatlib.create_model("coatnet_0_rw").state_dict()
    state["head.bias"][281] = 100.0  # so that the chapter shows these weights: a tabby in every photograph
    torch.save(state, tmp_path / "coatnet_0_rw.pth")
    monkeypatch.setenv("COATLIB_05B_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and no download is tried
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    nb = nbformat.read(CHAPTER, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(CHAPTER.parent)}}
    )
    client.execute()  # raises CellExecutionError on an error in any cell

    everything = "".join(text(c) for c in nb.cells if c.cell_type == "code")
    assert OFFLINE not in everything and "skipped" not in everything.lower()
    load, predictions, tables, attention = weight_cells(nb)
    assert text(load) == "coatnet_0_rw loaded, timm's ImageNet top-1: 82.4%\n"
    lines = text(predictions).splitlines()
    assert lines[0::6] == ["chelsea:", "coffee:", "astronaut:", "rocket:"]
    classes = set(imagenet_classes())
    guesses = [line for i, line in enumerate(lines) if i % 6]
    assert len(guesses) == 20 and all(re.fullmatch(r"  +\d+%  .+", g) for g in guesses)
    assert all(g.split("%  ", 1)[1] in classes for g in guesses)
    assert lines[1::6] == ["  100%  tabby, tabby cat"] * 4
    assert images(tables) == 2  # every head of S3, then of S4
    assert images(attention) == 1


def test_book_workflow_downloads_and_executes_the_chapters_that_need_the_network():
    """Only the chapters that download run in the `book` workflow, after their weights are fetched
    and before the build; every other chapter is rendered with its committed outputs."""
    needs = {}  # chapter -> the models it downloads
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        sources = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        if models := DOWNLOADS.findall(sources):
            needs[path.relative_to(ROOT).as_posix()] = set(models)
    assert needs == {"notebooks/05b_trained_coatnet.ipynb": {"coatnet_0_rw"}}

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job.get("steps", [])]
    build = runs.index("jupyter-book build . -W --keep-going")
    executes = [i for i, run in enumerate(runs) if "coatlib.teaching.book execute" in run]
    assert len(executes) == 1 and executes[0] < build
    executed = re.search(r"coatlib\.teaching\.book execute (.+)", runs[executes[0]])[1].split()
    assert set(executed) == set(needs)
    assert OFFLINE.split(":")[0] in runs[executes[0]]  # the step fails if a cell still ran without weights
    for model in set().union(*needs.values()):
        fetch = [i for i, run in enumerate(runs) if "pretrained_state_dict" in run and f"'{model}'" in run]
        assert fetch and fetch[0] < executes[0], f"the workflow does not download {model} first"
    assert any("pip install -e .[pretrained]" in run for run in runs)


# ---- the per-model table -------------------------------------------------------------------------


def test_per_model_table_is_the_docstrings_and_the_chapters():
    assert per_model_table() in coatnet_rw.__doc__
    printed = [c for c in nbformat.read(CHAPTER, as_version=4).cells if c.source == "print(per_model_table())"]
    assert len(printed) == 1 and text(printed[0]) == per_model_table() + "\n"


def test_the_chapters_per_model_sentences():
    """What the chapter says, model by model (timm's configurations are checked in the next test)."""

    def models(keep) -> set[str]:
        return {name.removeprefix("coatnet_").removesuffix("_rw") for name, c in RW_CONFIGS.items() if keep(c)}

    assert models(lambda c: c.se_early) == {"0", "1", "bn_0"}
    assert models(lambda c: c.se_act == "relu") == {"0", "1", "bn_0"}
    assert models(lambda c: not c.attn_shortcut_bias) == {"0", "1", "bn_0"}
    assert models(lambda c: c.down == "dw") == {"1", "2", "3", "bn_0"}
    assert models(lambda c: c.attn_norm == "batchnorm") == {"bn_0"}
    assert models(lambda c: c.layer_scale is not None) == {"3"}
    assert models(lambda c: not c.pre_norm_act) == models(lambda c: c.conv_bias) == {"nano"}


def test_rw_configs_are_timms(timm):
    """Each field of RW_CONFIGS against timm's own configuration (timm/models/maxxvit.py)."""
    from timm.models.maxxvit import model_cfgs

    norms = {"layernorm2d": "layernorm", "batchnorm2d": "batchnorm"}
    for name, config in RW_CONFIGS.items():
        cfg = model_cfgs[name]
        conv, transformer = cfg.conv_cfg, cfg.transformer_cfg
        assert (config.stem, config.depths, config.widths) == (cfg.stem_width, cfg.depths, cfg.embed_dim), name
        assert config.pre_norm_act == conv.pre_norm_act, name
        assert config.se_early == conv.attn_early, name
        assert config.se_act == conv.attn_act_layer, name
        assert config.conv_bias == conv.output_bias, name
        assert config.down == conv.stride_mode, name
        assert config.attn_shortcut_bias == transformer.shortcut_bias, name
        assert config.attn_norm == norms[transformer.norm_layer], name
        assert config.layer_scale == transformer.init_values, name
        assert config.head_dim == transformer.dim_head and transformer.rel_pos_type == "bias", name


# ---- ImageNet class names ------------------------------------------------------------------------


def test_imagenet_classes_ship_with_coatlib():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == "tench, Tinca tinca"
    assert classes[281] == "tabby, tabby cat"
    assert classes[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_imagenet_classes_are_timms(timm):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert imagenet_classes() == [info.index_to_description(i) for i in range(1000)]
