"""The repository's promises: README's commands, CI calling the same test command, recipes that parse."""

import glob
import os
import re

import pytest

from hfcoop.cli import ALGORITHMS, ScriptArguments, _algorithm, model_arguments, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_main_job_and_test_commands():
    main_job, tests = readme_commands()[:2]
    assert "hfcoop train cot --config coco/cot_tiny" in main_job  # a bundled recipe: works from any folder
    assert "torch==2.13.0" in main_job and "torch==2.13.0" in tests
    assert "pytest tests" in tests


def test_ci_runs_the_readme_test_command():
    tests = readme_commands()[1]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert tests in ci.splitlines()


TRAINING_RECIPES = sorted(
    path
    for path in glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True)
    if os.sep + "accelerate" + os.sep not in path  # accelerate launch configs, validated in test_cli.py
)


def test_there_are_recipes():
    assert len(TRAINING_RECIPES) >= 2


@pytest.mark.parametrize("recipe", TRAINING_RECIPES)
def test_every_recipe_parses_into_its_config(recipe):
    stem = os.path.basename(recipe)
    name = "psi_mle" if stem.startswith("psi_mle") else stem.split("_")[0].removesuffix(".yaml")
    name = name if name in ALGORITHMS else os.path.basename(os.path.dirname(recipe))  # recipes/<algorithm>/x.yaml
    assert name in ALGORITHMS, f"recipe {recipe}: name it <algorithm>[_variant].yaml or put it in recipes/<algorithm>/"
    config_cls = _algorithm(name).config_cls
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU machine: override it, check the rest.
    script, args, _ = parse((ScriptArguments, config_cls, model_arguments()),
                            ["--config", recipe, "--bf16", "false", "--fp16", "false"])  # fmt: skip
    assert script.dataset_name and args.output_dir


def test_every_hfcoop_import_in_the_repository_resolves():
    """Benchmarks and notebooks import hfcoop names inside functions and cells, which no other test executes: a name
    moved or removed (an old import path) must break here, not in a user's benchmark run after minutes of work."""
    import ast
    import importlib
    import json

    sources = {f: open(f, encoding="utf-8").read()
               for pattern in ("benchmarks/*.py", "tests/**/*.py", "hfcoop/**/*.py")
               for f in glob.glob(os.path.join(ROOT, pattern), recursive=True)}  # fmt: skip
    for path in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")):
        cells = json.load(open(path, encoding="utf-8"))["cells"]
        sources[path] = "\n".join("".join(line for line in c["source"] if not line.lstrip().startswith(("!", "%")))
                                  for c in cells if c["cell_type"] == "code")  # fmt: skip
    missing = []
    for path, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "hfcoop":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                        missing.append(f"{os.path.relpath(path, ROOT)}: from {node.module} import {alias.name}")
    assert not missing, missing
