"""The exported generator is what was trained: loaded with `from_pretrained` or `pipeline`, it samples with the
training's settings (not greedily, not with the pipeline's own defaults)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from hfcoop import CoTConfig, CoTTrainer
from hfcoop.sampling import lean_sampling_settings
from hfcoop.tiny import TURN_END, build_tiny_model

from conftest import coco_lines

SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.9, max_completion_length=5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A CoT run of one step on an instruct-style tiny model (two EOS ids), exported with a checkpoint."""
    base = build_tiny_model(str(tmp_path_factory.mktemp("base")), coco_lines(300), vocab_size=500, n_layer=1,
                            n_embd=32, n_head=2, n_positions=64, chat=True)  # fmt: skip
    out = str(tmp_path_factory.mktemp("run") / "out")
    args = CoTConfig(output_dir=out, max_steps=1, per_device_train_batch_size=4, save_strategy="steps", save_steps=1,
                     use_cpu=True, report_to=[], disable_tqdm=True, **SAMPLING)  # fmt: skip
    from datasets import Dataset

    trainer = CoTTrainer(base, args=args, train_dataset=Dataset.from_dict({"text": coco_lines(16)}))
    trainer.train()
    trainer.save_model()
    return trainer, out


def seeded(fn, seed):
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("folder", ["", "checkpoint-1"])
def test_generation_config_carries_the_training_sampling_settings(exported, folder):
    trainer, out = exported
    saved = json.load(open(f"{out}/{folder}/generation_config.json".replace("//", "/")))
    tok = trainer.processing_class
    assert len(trainer.eos_token_ids) == 2 and tok.convert_tokens_to_ids(TURN_END) in trainer.eos_token_ids
    assert {k: saved.get(k) for k in ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "eos_token_id",
                                      "pad_token_id")} == {  # fmt: skip
        "do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "max_new_tokens": 5,
        "eos_token_id": trainer.eos_token_ids, "pad_token_id": tok.pad_token_id,
    }  # fmt: skip


def test_no_separate_sampling_folder(exported):
    _, out = exported
    import os

    assert not os.path.exists(os.path.join(out, "hfcoop_sampling"))


def test_generate_and_pipeline_sample_as_training_did(exported):
    trainer, out = exported
    model = AutoModelForCausalLM.from_pretrained(out)
    # generate() on the export resolves to the sampler settings hfcoop trained with (same merge, same distribution).
    assert lean_sampling_settings(model, model.generation_config) == lean_sampling_settings(
        trainer.pair.generator, trainer.generation_config
    )
    prompt = torch.tensor([[trainer.processing_class.bos_token_id]] * 8)
    default = lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt))  # noqa: E731
    as_trained = lambda: model.generate(  # noqa: E731
        prompt, attention_mask=torch.ones_like(prompt), generation_config=trainer.generation_config
    )
    assert torch.equal(seeded(default, 0), seeded(as_trained, 0))  # the saved defaults are the training's settings
    assert not torch.equal(seeded(default, 0), seeded(default, 1))  # it samples (greedy would repeat itself)
    assert seeded(default, 0).shape[1] <= 1 + SAMPLING["max_completion_length"]

    generator = pipeline("text-generation", out, device="cpu")
    text = "a man riding a"
    ids = trainer.processing_class(text, return_tensors="pt")["input_ids"]
    for seed in (0, 1, 2):
        (piped,) = seeded(lambda: generator(text, return_tensors=True), seed)
        expected = seeded(lambda: model.generate(ids, attention_mask=torch.ones_like(ids),
                                                 generation_config=trainer.generation_config), seed)  # fmt: skip
        assert piped["generated_token_ids"] == expected[0].tolist()
        assert len(piped["generated_token_ids"]) <= ids.shape[1] + SAMPLING["max_completion_length"]


def test_quality_report_samples_with_the_exported_settings(exported, monkeypatch):
    """`hfcoop train`'s before/after report (the card's results) draws its samples as the export samples."""
    import hfcoop.evaluation
    from datasets import Dataset

    from hfcoop.cli import quality

    trainer, out = exported
    configs = []
    original = hfcoop.evaluation.sample_completions
    monkeypatch.setattr(hfcoop.evaluation, "sample_completions",
                        lambda model, ids, mask, config, *a: configs.append(config) or original(model, ids, mask, config, *a))  # fmt: skip
    quality(trainer, Dataset.from_dict({"text": coco_lines(4, "test")}), num_samples=4)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert configs and all(lean_sampling_settings(trainer.pair.generator, c) == lean_sampling_settings(
        model, model.generation_config) for c in configs)  # fmt: skip


def card_snippet(folder: str) -> str:
    card = open(f"{folder}/README.md").read()
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def pipeline_samples_as_trained(generator, trainer, text="a man riding a"):
    ids = trainer.processing_class(text, return_tensors="pt")["input_ids"]
    for seed in (0, 1):
        (piped,) = seeded(lambda: generator(text, return_tensors=True), seed)
        expected = seeded(lambda: generator.model.generate(ids, attention_mask=torch.ones_like(ids),
                                                           generation_config=trainer.generation_config), seed)  # fmt: skip
        assert piped["generated_token_ids"] == expected[0].tolist()


def test_the_cards_snippet_runs_and_samples_as_trained(exported, capsys):
    trainer, out = exported
    scope = {}
    exec(card_snippet(out), scope)  # the card's own code, as a user pastes it
    assert f'pipeline("text-generation", "{out}")' in card_snippet(out)  # not pushed: the local path
    pipeline_samples_as_trained(scope["generator"], trainer)


def test_an_adapter_export_samples_as_trained_through_its_cards_snippet(tiny_lm, tmp_path):
    """transformers and peft load an adapter's generation config from its base model; the card passes the export's."""
    from datasets import Dataset
    from peft import LoraConfig

    from hfcoop import MLEConfig, MLETrainer

    out = str(tmp_path / "adapter")
    args = MLEConfig(output_dir=out, max_steps=1, per_device_train_batch_size=4, use_cpu=True, report_to=[],
                     save_strategy="no", disable_tqdm=True, **SAMPLING)  # fmt: skip
    trainer = MLETrainer(tiny_lm, args=args, train_dataset=Dataset.from_dict({"text": coco_lines(8)}),
                         peft_config=LoraConfig(r=4, target_modules=["c_attn"], task_type="CAUSAL_LM"))  # fmt: skip
    trainer.train()
    trainer.save_model()
    assert json.load(open(f"{out}/generation_config.json"))["top_k"] == 40
    assert "library_name: peft" in open(f"{out}/README.md").read()
    scope = {}
    exec(card_snippet(out), scope)
    pipeline_samples_as_trained(scope["generator"], trainer)
