"""What the package carries beside its code: the recipes, accelerate launch configs and data slices of `recipes/`.

In a checkout they are the repository's ``recipes/``; an installed wheel holds the same files as ``hfcoop/recipes/``
(setup.py maps the one onto the other), so a recipe named ``coco/cot_tiny`` works from any folder, Colab included.
"""

from __future__ import annotations

import os
from pathlib import Path

# `--accelerate_config` short names (TRL's `trl ... --accelerate_config zero3` habit) -> files in recipes/accelerate/
ACCELERATE_CONFIGS = {
    "ddp": "multi_gpu_ddp",
    "multi_gpu": "multi_gpu_ddp",
    "zero2": "deepspeed_zero2",
    "zero3": "deepspeed_zero3",
    "fsdp": "fsdp",
    "fsdp2": "fsdp",
    "single_gpu": "single_gpu_bf16",
    "multi_node": "multi_node",
}


def recipes_root() -> Path:
    """The folder of bundled recipes: ``hfcoop/recipes`` in a wheel, else the checkout's ``recipes/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if (candidate / "data").is_dir():
            return candidate
    raise FileNotFoundError(f"hfcoop's bundled recipes are missing beside {package}: reinstall hfcoop.")


def list_recipes() -> list[str]:
    """Names of the bundled training recipes (``task/algorithm``), as ``--config`` takes them."""
    root = recipes_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml") if p.parent.name != "accelerate")


def recipe_summary(name: str) -> str:
    """The first comment line of a bundled recipe (what it trains), for ``hfcoop recipes``."""
    for line in (recipes_root() / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _bundled(relative: str, suffix: str) -> str | None:
    relative = relative[len("recipes/"):] if relative.startswith("recipes/") else relative
    root = recipes_root()
    for candidate in (root / relative, root / f"{relative}{suffix}"):
        if candidate.is_file():
            return str(candidate)
    return None


def find_recipe(name: str) -> str | None:
    """A ``--config`` value as a file: an existing path as given, else a bundled recipe (``coco/cot_tiny``,
    ``coco/cot_tiny.yaml`` or the checkout-relative ``recipes/coco/cot_tiny.yaml``); None if neither exists."""
    if os.path.isfile(name):
        return name
    return None if os.path.isabs(name) else _bundled(name, ".yaml")


def find_accelerate_config(name: str) -> str | None:
    """An ``--accelerate_config`` value as a file: a path, or a bundled config by short name (``zero3``) or file name."""
    if os.path.isfile(name):
        return name
    stem = ACCELERATE_CONFIGS.get(name, name)
    return None if os.path.isabs(name) else _bundled(f"accelerate/{stem}", ".yaml") or _bundled(name, ".yaml")


def data_file(relative: str) -> str:
    """A bundled data slice by its path under ``recipes/data`` (e.g. ``image_coco/test_coco.txt``)."""
    path = recipes_root() / "data" / relative
    if not path.is_file():
        raise FileNotFoundError(f"hfcoop bundles no data file '{relative}' (see {recipes_root() / 'data' / 'README.md'}).")
    return str(path)


def bundled_data_path(value: str) -> str | None:
    """A recipe's ``recipes/data/...`` value resolved inside the bundle (None if it names no bundled file)."""
    return _bundled(value, "") if value.startswith("recipes/") else None
