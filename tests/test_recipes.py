"""Every recipe in recipes/ runs through the CLI: the offline ``*_tiny.yaml`` ones train a few steps exactly as
shipped (lengths, task presets, data paths), the GPU ones are built end to end with ``--dry_run`` (config, data,
models, trainer, first batch) with their Hub model and dataset swapped for local stand-ins of the same layout."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from hfcoop.cli import main
from hfcoop.tiny import build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "recipes", "data")
RECIPES = sorted(p for p in glob.glob(os.path.join(ROOT, "recipes", "*", "*.yaml")) if "/accelerate/" not in p)
TINY = [p for p in RECIPES if p.endswith("_tiny.yaml")]
GPU = [p for p in RECIPES if not p.endswith("_tiny.yaml")]
# Local files with the column layout of each task's Hub dataset.
STAND_IN_DATA = {
    "coco": os.path.join(DATA, "coco_train_sample.txt"),
    "summarization": os.path.join(DATA, "xsum_sample.json"),
    "question_generation": os.path.join(DATA, "squad_qg_sample.jsonl"),
}


def algorithm_of(recipe: str) -> str:
    """recipes/<task>/<algorithm>[_variant].yaml"""
    from hfcoop.cli import ALGORITHMS

    stem = os.path.basename(recipe).removesuffix(".yaml")
    return max((a for a in ALGORITHMS if stem == a or stem.startswith(a + "_")), key=len)


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def test_recipe_lists_are_not_empty():
    assert len(TINY) >= 14 and len(GPU) >= 12


def test_no_recipe_reads_outside_the_repository():
    for recipe in RECIPES:
        settings = yaml.safe_load(open(recipe))
        for key in ("dataset_name", "eval_dataset_name"):
            value = settings.get(key)
            assert not (value and value.startswith("..")), f"{rel(recipe)}: {key} {value} is outside the clone"
            if value and value.startswith("recipes/"):
                assert os.path.exists(os.path.join(ROOT, value)), f"{rel(recipe)}: {value} is not shipped"


@pytest.mark.parametrize("recipe", TINY, ids=rel)
def test_tiny_recipe_trains(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name their data relative to the repository root, as README runs them
    out = str(tmp_path / "run")
    main(["train", algorithm_of(recipe), "--config", recipe, "--output_dir", out, "--max_steps", "2",
          "--max_train_samples", "48", "--max_eval_samples", "8", "--quality_samples", "0",
          "--per_device_train_batch_size", "4", "--tiny_model_hidden", "32", "--tiny_model_layers", "1",
          "--tiny_model_vocab_size", "600", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
          "--disable_tqdm", "true", "--eval_strategy", "no"])  # fmt: skip
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


@pytest.fixture(scope="module")
def long_context_lm(tmp_path_factory) -> str:
    """A tiny GPT-2 with GPT-2's 1024 positions, standing in for the recipes' Hub models."""
    texts = [line for f in ("coco_train_sample.txt",) for line in open(os.path.join(DATA, f))][:300]
    texts += [open(os.path.join(DATA, "xsum_sample.json")).read(), open(os.path.join(DATA, "squad_qg_sample.jsonl")).read()]
    path = str(tmp_path_factory.mktemp("long_lm"))
    return build_tiny_model(path, texts, vocab_size=800, n_layer=1, n_embd=32, n_head=2, n_positions=1024)


@pytest.mark.parametrize("recipe", GPU, ids=rel)
def test_gpu_recipe_builds(recipe, tmp_path, long_context_lm, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    settings = yaml.safe_load(open(recipe))
    task = os.path.basename(os.path.dirname(recipe))
    argv = ["train", algorithm_of(recipe), "--config", recipe, "--output_dir", str(tmp_path / "run"), "--dry_run",
            "true", "--model_name_or_path", long_context_lm, "--bf16", "false", "--fp16", "false",
            "--max_train_samples", "8", "--max_eval_samples", "4", "--report_to", "none"]  # fmt: skip
    if settings.get("companion_name_or_path"):
        argv += ["--companion_name_or_path", long_context_lm]
    if not os.path.exists(settings["dataset_name"]):  # a Hub dataset: a local file of the same layout
        argv += ["--dataset_name", STAND_IN_DATA[task]]
    main(argv)
    printed = capsys.readouterr().out
    assert "dry run OK" in printed
    assert not os.path.exists(tmp_path / "run" / "model.safetensors")  # nothing trained, nothing exported
