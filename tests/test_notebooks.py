"""Every Colab quick-start runs as Colab runs it: the installed package, the notebook alone in an empty folder.

SMOKE mode (tiny local model, bundled data) executes top to bottom in a kernel whose only hfcoop is a wheel installed
into a fresh folder (the `installed_hfcoop` fixture), from a folder holding nothing but the notebook: no checkout, no
``../recipes``. The Colab side (GPU runtime metadata, the "Open in Colab" link, the precision a GPU gets, the CoT
mediator) is checked without a GPU.
"""

import glob
import json
import os
import re
import shutil

import nbformat
import pytest
import torch
import yaml
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
SETUP_URL = re.search(r'^URL = "([^"]+)"', open(os.path.join(ROOT, "setup.py")).read(), re.M).group(1)
# Injected after the last cell: where the kernel's hfcoop and bundled data came from, and the precision training used.
WHERE = """import hfcoop, hfcoop.bundled
print("hfcoop from", hfcoop.__file__)
print("data from", hfcoop.bundled.recipes_root())
print("precision", PRECISION, "bf16", args.bf16, "fp16", args.fp16)"""


def code_cell(nb, marker: str):
    return next(c for c in nb["cells"] if c["cell_type"] == "code" and marker in "".join(c["source"]))


def test_four_quickstarts_exist():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert names >= {"cot_coco_captions.ipynb", "gcn_summarization.ipynb", "psi_mle_question_generation.ipynb",
                     "psi_mle_question_generation_chat.ipynb"}  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_from_the_installed_package_alone_in_an_empty_folder(path, installed_hfcoop, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    colab = tmp_path / "content"  # as Colab's /content: the notebook and nothing else
    colab.mkdir()
    copy = shutil.copy(path, colab)
    nb = nbformat.read(copy, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "SMOKE = False" in params.source  # Hub model by default
    params.source = params.source.replace("SMOKE = False", "SMOKE = True")
    nb.cells.append(new_code_cell(WHERE))
    # nbclient's kernel inherits this process's environment: only the installed copy on its path.
    for key in ("PYTHONPATH", "HF_HUB_OFFLINE", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, installed_hfcoop["env"][key])
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(colab)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Traceback" not in outputs
    site = installed_hfcoop["site"]
    assert f"hfcoop from {os.path.join(site, 'hfcoop', '__init__.py')}" in outputs, outputs[-2000:]
    assert f"data from {os.path.join(site, 'hfcoop', 'recipes')}" in outputs, outputs[-2000:]
    assert "GPU: none; training precision: fp32" in outputs  # the CPU's choice, reported early ...
    assert "precision fp32 bf16 False fp16 False" in outputs  # ... and what the training config got
    assert any(os.path.isfile(p) for p in glob.glob(str(colab / "*" / "model.safetensors")))  # a model was saved


# ------------------------------------------------------------------------------------------------ Colab
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_opens_in_colab_on_a_gpu_runtime_from_setup_py_url(path):
    nb = json.load(open(path))
    assert nb["metadata"]["accelerator"] == "GPU" and "colab" in nb["metadata"]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert SETUP_URL.startswith("https://github.com/")
    owner_repo = SETUP_URL.removeprefix("https://github.com/")
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    links = re.findall(r"https://colab\.research\.google\.com/github/[^)\s\"]+", "".join(first["source"]))
    assert links == [f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{os.path.basename(path)}"]


class FakeGPU:
    """torch.cuda as each Colab runtime reports it: ``is_bf16_supported()`` counts emulation by default (a T4 says
    True then), ``including_emulation=False`` asks for bf16 hardware (compute capability 8.0+)."""

    def __init__(self, name: str | None, capability: int = 0):
        self.name, self.capability = name, capability

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.name is not None)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: self.name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: including_emulation or self.capability >= 8)  # fmt: skip


@pytest.mark.parametrize("gpu,precision", [(FakeGPU("Tesla T4", 7), "fp16"), (FakeGPU("NVIDIA A100-SXM4-40GB", 8), "bf16"),
                                           (FakeGPU("NVIDIA L4", 8), "bf16"), (FakeGPU(None), "fp32")],
                         ids=["T4", "A100", "L4", "CPU"])  # fmt: skip
def test_an_early_cell_reports_the_gpu_and_picks_the_precision_training_uses(gpu, precision, monkeypatch, capsys):
    gpu.install(monkeypatch)
    for path in NOTEBOOKS:
        nb = json.load(open(path))
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        hardware = code_cell(nb, "PRECISION =")
        assert code.index(hardware) == 2, path  # right after the install and parameter cells
        namespace = {"SMOKE": False}
        exec("".join(hardware["source"]), namespace)
        assert namespace["PRECISION"] == precision, path
        assert f"GPU: {gpu.name or 'none'}; training precision: {precision}" in capsys.readouterr().out
        training = "".join(code_cell(nb, "Config(")["source"])
        assert 'bf16=PRECISION == "bf16", fp16=PRECISION == "fp16"' in training, path


def test_cot_notebook_trains_with_the_recipes_stronger_mediator():
    """CoT's full path uses recipes/coco/cot.yaml's generator and its larger mediator of the same tokenizer."""
    recipe = yaml.safe_load(open(os.path.join(ROOT, "recipes", "coco", "cot.yaml")))
    nb = json.load(open(os.path.join(ROOT, "notebooks", "cot_coco_captions.ipynb")))
    params = {}
    exec("".join(next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"]), params)
    assert (params["MODEL"], params["MEDIATOR"]) == (recipe["model_name_or_path"], recipe["companion_name_or_path"])
    assert "CoTTrainer(MODEL, mediator=MEDIATOR," in "".join(code_cell(nb, "CoTTrainer(")["source"])
