"""Loading models the way TRL users do: ``model_init_kwargs`` / ``companion_init_kwargs``, and QLoRA.

bitsandbytes (>= 0.50 here) ships CPU kernels for 4-bit (NF4/FP4) matmuls, so the QLoRA tests below run the real
4-bit path here (packed weights, ``Linear4bit`` forward and backward through the LoRA adapters); they are
skipped only where bitsandbytes is not installed (it is in the `dev` and `quantization` extras; verified with 0.50.2).
"""

import json
import math

import pytest
import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig

from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer, MLEConfig, MLETrainer, PsiMLEConfig, PsiMLETrainer
from hfcoop.modeling import is_quantized, resolve_init_kwargs

QUANT_4BIT = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}


def test_resolve_init_kwargs_like_trl():
    kwargs = resolve_init_kwargs('{"dtype": "bfloat16", "attn_implementation": "eager", "revision": "v1"}')
    assert kwargs == {"dtype": torch.bfloat16, "attn_implementation": "eager", "revision": "v1",
                      "trust_remote_code": False}  # fmt: skip
    assert resolve_init_kwargs(None, trust_remote_code=True) == {"dtype": "auto", "trust_remote_code": True}
    assert resolve_init_kwargs({"trust_remote_code": False}, trust_remote_code=True)["trust_remote_code"] is False
    assert resolve_init_kwargs({"torch_dtype": "float16"})["dtype"] is torch.float16  # the old spelling
    quant = resolve_init_kwargs({"quantization_config": QUANT_4BIT})["quantization_config"]
    assert isinstance(quant, BitsAndBytesConfig) and quant.load_in_4bit and quant.bnb_4bit_compute_dtype is torch.float32
    # Objects are accepted too, and written as JSON values in the saved arguments.
    args = MLEConfig(output_dir="unused", model_init_kwargs={"dtype": torch.bfloat16, "quantization_config":
                     BitsAndBytesConfig(load_in_4bit=True)}, companion_init_kwargs={"dtype": torch.float16})  # fmt: skip
    saved = json.loads(args.to_json_string())
    assert saved["model_init_kwargs"]["dtype"] == "bfloat16" and saved["companion_init_kwargs"] == {"dtype": "float16"}
    assert saved["model_init_kwargs"]["quantization_config"]["load_in_4bit"] is True
    assert isinstance(args.model_init_kwargs["quantization_config"], BitsAndBytesConfig)  # not changed in place
    assert resolve_init_kwargs(args.model_init_kwargs)["dtype"] is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_init_kwargs({"dtype": "bf16"})
    with pytest.raises(ValueError, match="JSON object string"):
        resolve_init_kwargs("dtype=bfloat16")


def small_args(config_cls, tmp_path, **kwargs):
    return config_cls(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, max_completion_length=6,
                      logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, **kwargs)  # fmt: skip


def test_init_kwargs_reach_generator_and_companion(tiny_lm, coco_text, tmp_path):
    args = small_args(CoTConfig, tmp_path, model_init_kwargs={"dtype": "bfloat16", "attn_implementation": "eager"},
                      companion_init_kwargs={"dtype": "float32"})  # fmt: skip
    trainer = CoTTrainer(tiny_lm, args=args, train_dataset=coco_text)
    generator, mediator = trainer.pair.generator, trainer.pair.companion
    assert generator.dtype == torch.bfloat16 and generator.config._attn_implementation == "eager"
    # companion_init_kwargs set: the mediator is re-loaded from the generator's checkpoint with them.
    assert mediator.dtype == torch.float32 and mediator is not generator
    assert torch.equal(mediator.lm_head.weight.bfloat16(), generator.lm_head.weight)
    # Unset, the companion follows model_init_kwargs (here: a copy of the bf16 generator).
    args = small_args(PsiMLEConfig, tmp_path, model_init_kwargs={"dtype": "bfloat16"})
    ratio = PsiMLETrainer(tiny_lm, args=args, train_dataset=coco_text).pair.companion
    assert ratio.dtype == torch.bfloat16


def test_quantization_without_adapters_is_an_early_error(coco_text, tmp_path):
    args = small_args(MLEConfig, tmp_path, model_init_kwargs={"quantization_config": QUANT_4BIT})
    with pytest.raises(ValueError, match="no peft_config"):  # raised before loading: the path does not even exist
        MLETrainer("no/such-model", args=args, train_dataset=coco_text, processing_class=_any_tokenizer())


def _any_tokenizer():
    from hfcoop.tiny import train_word_tokenizer

    return train_word_tokenizer(["a b c"])


def _packed(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.dtype == torch.uint8}


@pytest.fixture(scope="module")
def tiny_lm_4bit(tmp_path_factory) -> str:
    """A tiny GPT-2 whose layers bitsandbytes' packed 4-bit CPU kernels accept (inputs a multiple of the 64-wide
    quantization block, outputs a multiple of 32 rows): the packed format is reached, not refused by shape."""
    from conftest import coco_lines
    from hfcoop.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_lm_4bit")
    return build_tiny_model(str(path), coco_lines(500), vocab_size=600, n_layer=1, n_embd=64, n_head=2, n_positions=64)


@pytest.mark.parametrize("width", [32, 64])
def test_qlora_cot_trains_adapters_on_4bit_generator_and_mediator(width, tiny_lm, tiny_lm_4bit, coco_text, tmp_path):
    """Sampling (eval, no grad) then training on 4-bit layers: on AVX512-BF16 CPUs bitsandbytes packed the weights for
    inference at the first sample, which failed for layers narrower than a block (width 32) and broke the next
    training forward (width 64); the trained models keep the unpacked format."""
    # bf16 checkpoint weights: QLoRA's preparation upcasts what stays unquantized (norms, embeddings) to float32.
    args = small_args(CoTConfig, tmp_path, learning_rate=1e-2, mediator_learning_rate=1e-2, companion_peft=True,
                      model_init_kwargs={"dtype": "bfloat16", "quantization_config": QUANT_4BIT})  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    trainer = CoTTrainer(tiny_lm if width == 32 else tiny_lm_4bit, args=args, train_dataset=coco_text, peft_config=lora)
    generator, mediator = trainer.pair.generator, trainer.pair.companion
    for model in (generator, mediator):
        assert is_quantized(model)
        assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
        assert model.get_base_model().transformer.ln_f.weight.dtype == torch.float32
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)  # prepare_model_for_kbit_training froze the rest
    packed = _packed(generator), _packed(mediator)
    lora_b = {n: p.detach().clone() for n, p in trainer.pair.named_parameters() if "lora_B" in n}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = dict(trainer.pair.named_parameters())
    moved = {n.split(".")[0] for n in lora_b if not torch.equal(lora_b[n], after[n])}
    assert moved == {"generator", "companion"}  # both models' adapters learned (B starts at zero)
    for before, model in zip(packed, (generator, mediator)):  # the 4-bit weights stayed put
        assert before and all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    trainer.save_model()
    saved = set(__import__("os").listdir(tmp_path))
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved


@pytest.mark.parametrize("companion_peft", [True, False])
def test_qlora_gcn_discriminator_in_4bit(tiny_lm, coco_prompt_completion, tmp_path, companion_peft):
    args = small_args(GCNConfig, tmp_path, num_candidates=2, learning_rate=1e-2, discriminator_learning_rate=1e-2,
                      companion_peft=companion_peft, model_init_kwargs={"quantization_config": QUANT_4BIT})  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    if not companion_peft:  # a 4-bit discriminator without adapters could not learn
        with pytest.raises(ValueError, match="companion_peft"):
            GCNTrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion, peft_config=lora)
        return
    trainer = GCNTrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion, peft_config=lora)
    discriminator = trainer.pair.companion
    assert is_quantized(discriminator)
    head = {n: p.detach().clone() for n, p in discriminator.named_parameters() if p.requires_grad and "score" in n}
    assert head and all(torch.count_nonzero(p) == 0 for p in head.values())  # D = 1/2 at the start
    trainer.train()
    after = dict(discriminator.named_parameters())
    assert any(not torch.equal(head[n], after[n]) for n in head)  # the one-logit head learned (SEQ_CLS adapters)
    # Unquantized companion on request: companion_init_kwargs {} loads D in full precision beside the 4-bit G.
    args.companion_init_kwargs, args.companion_peft = {}, False
    trainer = GCNTrainer(tiny_lm, args=args, train_dataset=coco_prompt_completion, peft_config=lora)
    assert is_quantized(trainer.pair.generator) and not is_quantized(trainer.pair.companion)


def test_qlora_on_chat_data_through_the_cli(tmp_path):
    """The issue's "done when": an instruct-style model on `messages` data, QLoRA through TRL's YAML keys."""
    import os

    from hfcoop.cli import train

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipe = tmp_path / "qlora.yaml"
    recipe.write_text(
        "use_peft: true\ncompanion_peft: true\nlora_r: 4\nlora_alpha: 8\n"
        "model_init_kwargs:\n  quantization_config:\n    load_in_4bit: true\n    bnb_4bit_quant_type: nf4\n"
        "    bnb_4bit_compute_dtype: float32\n"
    )
    out = str(tmp_path / "run")
    report = train(["cot", "--config", str(recipe), "--tiny_model", "true", "--tiny_model_hidden", "32",
                    "--tiny_model_layers", "1", "--tiny_model_vocab_size", "2000",
                    "--dataset_name", os.path.join(root, "recipes", "data", "squad_qg_chat_train.jsonl"),
                    "--eval_dataset_name", os.path.join(root, "recipes", "data", "squad_qg_chat_test.jsonl"),
                    "--max_train_samples", "16", "--max_eval_samples", "4", "--quality_samples", "4",
                    "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
                    "--max_prompt_length", "48", "--learning_rate", "1e-2", "--save_strategy", "no",
                    "--report_to", "none", "--disable_tqdm", "true", "--output_dir", out])  # fmt: skip
    assert all(math.isfinite(v) for v in report["after"].values())
    assert report["after"]["nll_per_token"] != report["before"]["nll_per_token"]  # the adapters learned
    saved = set(os.listdir(out))
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    adapter = json.load(open(os.path.join(out, "adapter_config.json")))
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
