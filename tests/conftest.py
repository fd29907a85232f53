"""Shared fixtures: tiny models built from configs, saved and loaded back by path like a Hub model."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # without it a Hub lookup retries for ~48 s before failing
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "HFCOOP_CACHE" not in os.environ:  # the CLI's tiny base models: one fresh cache per test session, not ~/.cache
    import tempfile

    os.environ["HFCOOP_CACHE"] = tempfile.mkdtemp(prefix="hfcoop-cache-")

import pathlib

import pytest
from datasets import Dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
BUNDLED_DATA = ROOT / "recipes" / "data"


def coco_lines(n: int, split: str = "train") -> list[str]:
    """COCO captions (Texygen split) from ../shared/data, or the slice bundled in the repo."""
    name = "image_coco.txt" if split == "train" else "test_coco.txt"
    path = SHARED_DATA / "image_coco" / name
    if not path.exists():
        path = BUNDLED_DATA / f"coco_{split}_sample.txt"
    return [line for line in path.read_text().splitlines() if line.strip()][:n]


VERSIONED = ("torch", "transformers", "accelerate", "datasets", "peft", "trl", "evaluate", "tokenizers",
             "huggingface-hub", "safetensors", "deepspeed", "bitsandbytes", "sacrebleu", "rouge-score")


def pytest_sessionstart(session) -> None:
    """Prints the exact versions this run tests (CI installs the newest releases setup.py allows), also under -q."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = "hfcoop tested with: " + ", ".join(found)
    reporter.write_line(line) if reporter is not None else print(line)


@pytest.fixture(scope="session")
def installed_hfcoop(tmp_path_factory) -> dict[str, str]:
    """hfcoop as a user gets it: the wheel built from a copy of the sources, installed into a fresh folder with no
    checkout beside it. Returns ``env`` (for subprocesses: that folder first on PYTHONPATH), ``site`` and ``hfcoop``
    (the installed console script). Run commands from an empty folder."""
    import shutil
    import subprocess
    import sys

    base = tmp_path_factory.mktemp("installed")
    src, wheels, site = base / "src", base / "wheels", base / "site"
    # A copy: setuptools' build/ folder in the checkout could carry stale modules into the wheel.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                  ".ci-venv", ".venv", "outputs", "mutants", "benchmarks",
                                                                  "tests", "notebooks"))  # fmt: skip
    quiet = {"capture_output": True, "text": True}
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], **quiet)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next(wheels.glob("hfcoop-*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          **quiet)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return {"env": env, "site": str(site), "hfcoop": str(site / "bin" / "hfcoop"), "wheel": str(wheel)}


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """A 1-layer GPT-2 with a word-level tokenizer trained on 500 COCO captions."""
    from hfcoop.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_lm")
    return build_tiny_model(str(path), coco_lines(500), vocab_size=600, n_layer=1, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture()
def coco_text() -> Dataset:
    return Dataset.from_dict({"text": coco_lines(64)})


@pytest.fixture()
def coco_prompt_completion() -> Dataset:
    lines = coco_lines(64)
    return Dataset.from_dict(
        {"prompt": [" ".join(l.split()[:3]) for l in lines], "completion": [" ".join(l.split()[3:]) for l in lines]}
    )
