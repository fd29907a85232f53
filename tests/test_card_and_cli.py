"""The model card tells the truth; the CLI's help, env, dataset generation and file scoring; install cell; warnings."""

import ast
import glob
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
from packaging.requirements import Requirement

import transformers.modeling_utils
from hfcoop import CoTConfig, CoTTrainer, MLEConfig, MLETrainer
from hfcoop.cli import main
from hfcoop.model_card import is_hub_id, render_model_card

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "recipes", "data")
SETUP_URL = re.search(r'^URL = "([^"]+)"', open(os.path.join(ROOT, "setup.py")).read(), re.M).group(1)
SMALL = dict(per_device_train_batch_size=4, max_completion_length=6, use_cpu=True, disable_tqdm=True,
             save_strategy="no", report_to=[], max_steps=1)  # fmt: skip


def card_args(**overrides):
    kwargs = dict(model_id="m", algorithm="cot", algorithm_title="CoT", paper="", citation="", base_model=None,
                  datasets=[], companion="mediator", companion_saved=False, hyperparameters={}, metrics={},
                  command="hfcoop train cot")  # fmt: skip
    return kwargs | overrides


def metadata(card: str) -> str:
    return card.split("---")[1]


# ----------------------------------------------------------------------------- model card
@pytest.mark.parametrize("name,hub", [("xsum", True), ("abisee/cnn_dailymail", True), ("data/train.jsonl", False),
                                      ("../shared/data/image_coco/test_coco.txt", False), ("/abs/folder", False),
                                      ("a/b/c", False), ("coco.txt", False)])  # fmt: skip
def test_only_hub_ids_are_hub_ids(name, hub):
    assert is_hub_id(name) is hub


def test_card_metadata_lists_only_hub_training_data(tmp_path):
    local = str(tmp_path)  # an existing folder with a Hub-id-like name would still be local
    card = render_model_card(**card_args(datasets=["abisee/cnn_dailymail", "recipes/data/coco.txt", local],
                                         eval_datasets=["EdinburghNLP/xsum"]))  # fmt: skip
    assert "datasets:\n- abisee/cnn_dailymail\n" in metadata(card)
    assert "coco.txt" not in metadata(card) and local not in metadata(card)
    assert "EdinburghNLP/xsum" not in metadata(card)  # evaluation data is not training data
    assert "**Evaluation data:** EdinburghNLP/xsum" in card
    assert "**Training data:** abisee/cnn_dailymail, recipes/data/coco.txt" in card
    assert "datasets:" not in metadata(render_model_card(**card_args(datasets=["train.jsonl"])))


def test_card_metadata_is_valid_model_card_data(tmp_path):
    """Parsed back by huggingface_hub: Hub ids only for base_model/datasets, and a model-index of the quality report's
    final numbers on the named evaluation data."""
    from huggingface_hub import ModelCard

    quality = {"before": {"bleu-2": 0.1}, "after": {"bleu-2": 0.25, "nll_per_token": 4.0}}
    card = ModelCard(render_model_card(**card_args(model_id="me/cot-gpt2", base_model="openai-community/gpt2",
                                                   datasets=["abisee/cnn_dailymail"], eval_datasets=["EdinburghNLP/xsum"],
                                                   quality=quality, tags=["summarization"])))  # fmt: skip
    data = card.data
    assert (data.base_model, data.datasets, data.library_name, data.pipeline_tag) == (
        "openai-community/gpt2", ["abisee/cnn_dailymail"], "transformers", "text-generation")
    assert data.tags == ["hfcoop", "cot", "summarization"] and data.model_name == "cot-gpt2"
    assert [(r.task_type, r.dataset_type, r.dataset_name, r.metric_type, r.metric_value) for r in data.eval_results] == [
        ("text-generation", "EdinburghNLP/xsum", "EdinburghNLP/xsum", "bleu-2", 0.25),
        ("text-generation", "EdinburghNLP/xsum", "EdinburghNLP/xsum", "nll_per_token", 4.0),
    ]  # fmt: skip
    assert 'pipeline("text-generation", "me/cot-gpt2")' in card.text
    split = ModelCard(render_model_card(**card_args(eval_datasets=["EdinburghNLP/xsum (validation split)"],
                                                    quality=quality))).data.eval_results[0]  # fmt: skip
    assert (split.dataset_type, split.dataset_name, split.dataset_split) == ("EdinburghNLP/xsum", "EdinburghNLP/xsum",
                                                                              "validation")  # fmt: skip
    local = ModelCard(render_model_card(**card_args(base_model=str(tmp_path), quality=quality))).data
    assert local.base_model is None and local.eval_results is None  # a local base; no evaluation data named


def test_card_reports_quality_json_and_versions():
    quality = {"before": {"bleu": 0.1, "nll_per_token": 5.0}, "after": {"bleu": 0.25, "nll_per_token": 4.0}}
    card = render_model_card(**card_args(quality=quality, versions={"transformers": "9.9"}))
    assert "No evaluation was run" not in card
    assert "| bleu | 0.1000 | 0.2500 |" in card and "| nll_per_token | 5.0000 | 4.0000 |" in card
    assert "- transformers: 9.9" in card
    assert "No evaluation was run" in render_model_card(**card_args())


@pytest.mark.parametrize("config_cls,trainer_cls,samples", [(MLEConfig, MLETrainer, False), (CoTConfig, CoTTrainer, True)])
def test_trainer_card_sampling_settings_versions_and_quality(tiny_lm, coco_text, tmp_path, config_cls, trainer_cls,
                                                             samples):  # fmt: skip
    out = tmp_path / "run"
    trainer = trainer_cls(tiny_lm, args=config_cls(output_dir=str(out), **SMALL), train_dataset=coco_text)
    trainer.dataset_names, trainer.eval_dataset_names = ["train.txt", "test.txt"], ["test.txt"]
    os.makedirs(out, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"after": {"rougeL": 0.375}}))
    trainer.save_model()
    card = (out / "README.md").read_text()
    assert ("- temperature:" in card) is samples and ("- top_p:" in card) is samples
    assert "- max_completion_length: 6" in card
    import transformers

    assert f"- transformers: {transformers.__version__}" in card
    assert "| rougeL | 0.3750 |" in card
    assert "**Training data:** train.txt\n" in card and "**Evaluation data:** test.txt" in card
    assert f"[hfcoop]({SETUP_URL})" in card  # where it is published, from setup.py via the installed metadata


# ----------------------------------------------------------------------------- CLI
def test_top_level_help_does_not_import_torch():
    code = ("import sys; from hfcoop.cli import main; main(['--help']); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "hfcoop env" in result.stdout and "hfcoop generate" in result.stdout


def test_train_help_imports_no_trainer():
    """`hfcoop train <algorithm> --help` reads its config module only, as `trl sft --help` reads SFTConfig: no
    Trainer, data or model code. What TrainingArguments imports itself (transformers 5: peft, bitsandbytes) is both
    commands' cost; anything on the list beyond it is hfcoop's (the trainer modules once put all of it there)."""
    heavy = ["transformers.trainer", "peft", "bitsandbytes", "datasets", "hfcoop.trainers.base", "hfcoop.trainers.cot",
             "hfcoop.modeling"]  # fmt: skip
    code = ("import sys; from transformers import TrainingArguments; before = set(sys.modules); "
            "from hfcoop.cli import main; main(['train', 'cot', '--help']); "
            f"print('loaded:', sorted(m for m in {heavy!r} if m in sys.modules and m not in before))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "(CoTConfig's own fields)" in result.stdout
    assert result.stdout.splitlines()[-1] == "loaded: []"


def test_train_help_groups_fields_and_points_to_help_all(capsys):
    main(["train", "gcn", "--help"])
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 150
    for heading in ("Companion and data (hfcoop):", "Generative Cooperative Networks (GCN) (GCNConfig's own fields):",
                    "Shared by every hfcoop algorithm (CooperativeConfig):", "--help-all"):  # fmt: skip
        assert heading in text
    assert "--num_candidates" in text and "--log_completions_steps" in text and "--learning_rate" in text
    assert "Model (TRL's ModelConfig" in text and "--load_in_4bit" in text and "--use_dora" in text
    assert "--adam_beta1" not in text
    with pytest.raises(SystemExit):
        main(["train", "gcn", "--help-all"])
    assert "--adam_beta1" in capsys.readouterr().out


def test_env_prints_versions_and_devices(capsys):
    import torch

    main(["env"])
    text = capsys.readouterr().out
    assert f"- torch: {torch.__version__}" in text and "- Accelerator(s): " in text and "- Python: " in text


def test_generate_from_a_dataset_with_multiline_prompts_then_evaluate_the_file(tiny_lm, tmp_path, capsys):
    rows = [{"prompt": f"context: a man rides\nanswer: {w}\nquestion:", "completion": f" what does {w} do"}
            for w in ("dog", "cat", "man")]  # fmt: skip
    data = tmp_path / "qg.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "completions.jsonl"
    main(["generate", "--model_name_or_path", tiny_lm, "--dataset_name", str(data), "--max_new_tokens", "4",
          "--num_samples", "2", "--output_file", str(out)])  # fmt: skip
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in written] == [r["prompt"] for r in rows for _ in range(2)]  # newlines kept
    assert [r["reference"] for r in written] == [r["completion"] for r in rows for _ in range(2)]
    assert all(isinstance(r["completion"], str) for r in written)
    capsys.readouterr()
    metrics = main_metrics(["evaluate", "--predictions_file", str(out)])
    assert {"bleu", "rouge1", "rougeL", "distinct-1"} <= set(metrics)


def main_metrics(argv):
    from hfcoop.cli import evaluate_cli

    return evaluate_cli(argv[1:])


def test_evaluate_scores_a_predictions_file_exactly(tmp_path):
    refs = ["a man riding a horse on the beach", "two dogs play in the snow today"]
    same, other = tmp_path / "same.jsonl", tmp_path / "other.jsonl"
    same.write_text("".join(json.dumps({"prompt": "p", "completion": r, "reference": r}) + "\n" for r in refs))
    other.write_text("".join(json.dumps({"completion": "zz yy xx ww", "reference": r}) + "\n" for r in refs))
    perfect = main_metrics(["evaluate", "--predictions_file", str(same)])
    assert perfect["bleu"] == pytest.approx(1.0) and perfect["rougeL"] == pytest.approx(1.0)
    assert main_metrics(["evaluate", "--predictions_file", str(other)])["rougeL"] == 0.0
    unconditional = tmp_path / "u.jsonl"
    unconditional.write_text("".join(json.dumps({"completion": r}) + "\n" for r in refs))
    with pytest.raises(SystemExit, match="dataset_name"):
        main_metrics(["evaluate", "--predictions_file", str(unconditional)])
    texts = tmp_path / "refs.txt"
    texts.write_text("\n".join(refs) + "\n")
    scored = main_metrics(["evaluate", "--predictions_file", str(unconditional), "--dataset_name", str(texts)])
    assert scored["bleu-2"] == pytest.approx(1.0) and "self-bleu-2" in scored


def test_generate_refuses_text_datasets(tiny_lm):
    with pytest.raises(SystemExit, match="prompt/completion"):
        main(["generate", "--model_name_or_path", tiny_lm, "--dataset_name", os.path.join(DATA, "coco_test_sample.txt")])


# ----------------------------------------------------------------------------- install cell, README
def install_command(cwd, monkeypatch, name="cot_coco_captions", importable=()):
    """The pip command a notebook's install cell runs from ``cwd`` when only ``importable`` modules are installed."""
    import importlib.util

    nb = json.load(open(os.path.join(ROOT, "notebooks", f"{name}.ipynb")))
    cell = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    calls = []
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: object() if module in importable else None)
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd))
    namespace = {}
    exec(cell, namespace)
    return calls, namespace["EXTRAS"]


NOTEBOOK_NAMES = sorted(os.path.basename(p)[: -len(".ipynb")] for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
SETUP_EXTRAS = next(ast.literal_eval(k.value) for k in ast.walk(ast.parse(open(os.path.join(ROOT, "setup.py")).read()))
                    if isinstance(k, ast.keyword) and k.arg == "extras_require")  # fmt: skip


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_every_notebook_has_the_same_install_cell(name):
    """One install cell everywhere; only the extras a notebook needs differ."""
    nb = json.load(open(os.path.join(ROOT, "notebooks", f"{name}.ipynb")))
    reference = json.load(open(os.path.join(ROOT, "notebooks", "cot_coco_captions.ipynb")))
    first = lambda n: re.sub(r"^EXTRAS = .*$", "EXTRAS = ...", "".join(  # noqa: E731
        next(c for c in n["cells"] if c["cell_type"] == "code")["source"]), flags=re.M)  # fmt: skip
    assert first(nb) == first(reference)


@pytest.mark.parametrize("name,extras", [("cot_coco_captions", ""), ("psi_mle_question_generation_chat", "[quantization]")])
def test_install_cell_uses_the_checkout_or_setup_py_url(name, extras, tmp_path, monkeypatch):
    calls, needed = install_command(os.path.join(ROOT, "notebooks"), monkeypatch, name)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", ROOT + extras]]
    calls, _ = install_command(tmp_path, monkeypatch, name)  # Colab
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"hfcoop{extras} @ git+{SETUP_URL}.git"]]
    requirement = Requirement(calls[0][-1])  # a valid PEP 508 requirement: pip takes the extras with the URL
    assert (requirement.name, requirement.extras, requirement.url) == ("hfcoop", set(needed), f"git+{SETUP_URL}.git")
    assert f"git+{SETUP_URL}.git" in open(os.path.join(ROOT, "README.md")).read()
    # Each extra is one of setup.py's, and the module it stands for is what that extra installs.
    for extra, module in needed.items():
        assert any(req.startswith(module) for req in SETUP_EXTRAS[extra]), (extra, module)
    # Skipped when everything is importable; a missing extra's module alone triggers the install.
    assert install_command(tmp_path, monkeypatch, name, importable=("hfcoop", *needed.values()))[0] == []
    if needed:
        calls, _ = install_command(tmp_path, monkeypatch, name, importable=("hfcoop",))
        assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"hfcoop{extras} @ git+{SETUP_URL}.git"]]


# ----------------------------------------------------------------------------- spurious warnings
def test_training_on_cpu_warns_neither_pin_memory_nor_padding(tiny_lm, coco_text, tmp_path, monkeypatch):
    would_warn = []
    original = transformers.modeling_utils.PreTrainedModel.warn_if_padding_and_no_attention_mask

    def record(self, input_ids, attention_mask):
        if attention_mask is None and self.config.pad_token_id in input_ids[:, [-1, 0]]:
            would_warn.append(tuple(input_ids.shape))
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(transformers.modeling_utils.PreTrainedModel, "warn_if_padding_and_no_attention_mask", record)
    args = CoTConfig(output_dir=str(tmp_path), **{**SMALL, "max_steps": 2, "use_cpu": False})  # a CPU-only machine
    assert args.dataloader_pin_memory is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CoTTrainer(tiny_lm, args=args, train_dataset=coco_text).train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    assert would_warn == []  # unconditional prompts are BOS = EOS = pad, with no padding: nothing to warn about
