"""push_to_hub: what is uploaded (the generator, tokenizer, card; never the mediator) with no network."""

import json
import os
from types import SimpleNamespace

import pytest

import transformers.trainer
from hfcoop import CoTConfig, CoTTrainer


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records calls and snapshots the uploaded folder."""

    def __init__(self):
        self.created, self.uploads = [], []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False):
        self.created.append((repo_id, token))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"user/{repo_id}")  # the token's namespace

    def upload_folder(self, repo_id, folder_path, token=None, path_in_repo=None, allow_patterns=None,
                      ignore_patterns=None, **kwargs):  # fmt: skip
        """Selects files as huggingface_hub's upload_folder does (its own filter and default ignore patterns)."""
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
        from huggingface_hub.utils import filter_repo_objects

        ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        paths = sorted(os.path.relpath(os.path.join(root, name), folder_path).replace(os.sep, "/")
                       for root, _, names in os.walk(folder_path) for name in names)  # fmt: skip
        selected = filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS)
        files = {rel: open(os.path.join(folder_path, rel), "rb").read() for rel in selected}
        self.uploads.append({"repo_id": repo_id, "files": files, "token": token, "path_in_repo": path_in_repo})
        commit = SimpleNamespace(commit_url="fake")
        # run_as_future=True (the pushes at each checkpoint): a finished future
        return SimpleNamespace(done=lambda: True, result=lambda: commit, commit_url="fake")


def test_push_to_hub_uploads_generator_tokenizer_and_card(tiny_lm, coco_text, tmp_path, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    args = CoTConfig(output_dir=str(tmp_path / "cot-run"), max_steps=2, per_device_train_batch_size=4,
                     max_completion_length=6, report_to="none", save_strategy="no", push_to_hub=True,
                     hub_token="hf_secret_token_value", disable_tqdm=True)  # fmt: skip
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)
    trainer.train()
    trainer.push_to_hub(dataset_name="image_coco")
    assert hub.created == [("cot-run", "hf_secret_token_value")]
    (upload,) = hub.uploads
    assert upload["repo_id"] == "user/cot-run"
    files = upload["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(files)
    assert not any(f.startswith("mediator") for f in files)  # the companion stays home unless asked
    card = files["README.md"].decode()
    assert "Cooperative Training (CoT)" in card and "image_coco" in card and "arXiv:1804.03782" in card
    assert all(b"hf_secret_token_value" not in content for content in files.values())  # token never written


def test_push_to_hub_without_token_fails_before_training(tiny_lm, coco_text, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    args = CoTConfig(output_dir=str(tmp_path / "o"), push_to_hub=True, report_to="none")
    with pytest.raises(ValueError, match="no Hugging Face token"):
        CoTTrainer(tiny_lm, train_dataset=coco_text, args=args)


# ----------------------------------------------------------------------------- what a push uploads
# The model and nothing else: weights, configs, tokenizer, card, training arguments (as JSON: no pickle is uploaded,
# not even the training_args.bin that Trainer's checkpoint pushes write into output_dir).
MODEL_FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "README.md", "hfcoop_training_args.json"}  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "recipes", "data")


def root_uploads(hub):
    """File lists of every upload of output_dir itself (checkpoint folders pushed by hub_strategy keep theirs)."""
    return [set(u["files"]) for u in hub.uploads if not u["path_in_repo"]]


def card_of(files):
    from huggingface_hub import ModelCard

    return ModelCard(files["README.md"].decode())


def test_api_push_uploads_the_model_alone_and_a_valid_card(tiny_lm, coco_text, tmp_path, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = str(tmp_path / "api-run")
    args = CoTConfig(output_dir=out, max_steps=2, per_device_train_batch_size=4, max_completion_length=6,
                     report_to=["tensorboard"], save_strategy="steps", save_steps=1, push_to_hub=True,
                     hub_token="hf_x", disable_tqdm=True, use_cpu=True, log_completions_steps=1, eval_strategy="steps",
                     eval_steps=2, eval_generation_samples=4)  # fmt: skip
    trainer = CoTTrainer(tiny_lm, train_dataset=coco_text, eval_dataset=coco_text.select(range(8)), args=args)
    trainer.train()
    trainer.push_to_hub()
    # Locally the run keeps its reports; the pushes (one per checkpoint, then the final one) carry the model alone.
    assert os.path.isdir(os.path.join(out, "completions")) and os.path.isdir(os.path.join(out, "runs"))
    assert os.path.isfile(os.path.join(out, "training_args.bin"))  # Trainer's pickle: kept home
    *during, final = root_uploads(hub)
    assert len(during) == 2 and final == MODEL_FILES
    # The pushes at each checkpoint (Trainer's: weights, configs, tokenizer, args) hold nothing else either.
    assert all({"model.safetensors", "generation_config.json"} <= files <= MODEL_FILES for files in during), during
    card = card_of(hub.uploads[-1]["files"])
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.base_model, data.datasets) == ("transformers", "text-generation",
                                                                                     None, None)  # local, not Hub ids
    assert {"hfcoop", "cot"} <= set(data.tags)
    # The evaluation data is named (described: the API run gave no name) and holds the model-index results.
    assert "**Evaluation data:** the `eval_dataset` given to the trainer (8 rows; columns: text)" in card.text
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["nll_per_token"] == pytest.approx(trainer.state.log_history[-2]["eval_loss"], rel=1e-5)
    assert {r.dataset_name for r in data.eval_results} == {"the `eval_dataset` given to the trainer (8 rows; columns: text)"}
    assert 'pipeline("text-generation", "user/api-run")' in card.text  # the Hub repo, not the folder name
    assert "- max_steps: 2" in card.text and "num_train_epochs" not in card.text
    assert "**Training length:** 2 optimizer steps (max_steps 2)" in card.text
    # Asked for, the reports go too.
    args.hub_include_reports = True
    pushed = set(trainer.files_to_push(out))
    assert {"completions/completions_00001.jsonl", "completions/completions_00002.jsonl"} <= pushed
    assert any(f.startswith("runs/") for f in pushed) and MODEL_FILES <= pushed


def test_cli_push_uploads_the_model_alone(tmp_path, monkeypatch):
    """The CLI builds a tiny base model and writes quality.json, curves and completions: none of it is pushed."""
    from hfcoop.cli import main

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    monkeypatch.setenv("HFCOOP_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "cli-cot")
    main(["train", "cot", "--config", os.path.join(ROOT, "recipes", "coco", "cot_tiny.yaml"),
          "--dataset_name", os.path.join(DATA, "coco_train_sample.txt"),
          "--eval_dataset_name", os.path.join(DATA, "coco_test_sample.txt"), "--max_train_samples", "32",
          "--max_eval_samples", "8", "--quality_samples", "4", "--tiny_model_hidden", "32", "--tiny_model_layers", "1",
          "--tiny_model_vocab_size", "300", "--max_steps", "2", "--per_device_train_batch_size", "8",
          "--max_completion_length", "6", "--save_steps", "1", "--log_completions_steps", "1", "--output_dir", out,
          "--push_to_hub", "true", "--hub_model_id", "me/coco-cot", "--hub_token", "hf_x", "--disable_tqdm", "true",
          "--use_cpu", "true"])  # fmt: skip
    assert {"quality.json", "training_curves.png", "completions"} <= set(os.listdir(out))
    assert not any(n.startswith("tiny-base-model") for n in os.listdir(out))  # scratch lives in the cache
    assert any(n.startswith("tiny-base-model-") for n in os.listdir(tmp_path / "cache"))
    *during, final = root_uploads(hub)
    assert len(during) == 2 and final == MODEL_FILES
    assert all({"model.safetensors", "generation_config.json"} <= files <= MODEL_FILES for files in during), during
    card = card_of(hub.uploads[-1]["files"])
    test_file = os.path.join(DATA, "coco_test_sample.txt")
    assert f"**Evaluation data:** {test_file}" in card.text
    quality = json.load(open(os.path.join(out, "quality.json")))["after"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == pytest.approx(quality, abs=1e-6) and set(results) == set(quality)  # rounded to 6 places
    assert {r.dataset_type for r in card.data.eval_results} == {"coco_test_sample.txt"}
    assert 'pipeline("text-generation", "me/coco-cot")' in card.text
    assert "- max_steps: 2" in card.text and "num_train_epochs" not in card.text
