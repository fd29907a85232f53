"""push_to_hub: what is uploaded (the generator, tokenizer, card; never the mediator) with no network."""

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
        return SimpleNamespace(repo_id=f"user/{repo_id}")

    def upload_folder(self, repo_id, folder_path, token=None, ignore_patterns=(), **kwargs):
        files = {}
        for root, _, names in os.walk(folder_path):
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), folder_path)
                if not rel.startswith("checkpoint-"):
                    files[rel] = open(os.path.join(root, name), "rb").read()
        self.uploads.append({"repo_id": repo_id, "files": files, "token": token})
        return SimpleNamespace(commit_url="fake")


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
