"""QLoRA check on a real accelerator: 4-bit (bitsandbytes NF4) generator + LoRA, companion in 4-bit + LoRA, chat data.

Meant to be called by ``benchmarks/gpu_check.sh`` on a CUDA machine (offline: the models are built from configs):

    python benchmarks/gpu_qlora_check.py --output benchmarks/results/gpu_qlora_check.json

It builds a small Llama-style instruct model (the tiny chat tokenizer: ChatML-like template, two EOS ids), then
  1. CoT with ``model_init_kwargs={"quantization_config": 4-bit NF4, bf16 compute}``, LoRA on G and the mediator,
  2. GCN with the discriminator re-loaded in 4-bit with SEQ_CLS LoRA (its one-logit head trains in full),
each for a few steps on the bundled conversational SQuAD-QG slice, and checks: ``Linear4bit`` modules on the device,
finite losses, adapters moved, packed 4-bit weights unchanged, every sample stopped on one of the two EOS ids or at
the budget; it reports the weight memory of the 4-bit generator against the same model in bf16. Exit status 1 if a
check fails. ``--device cpu`` runs the same path on bitsandbytes' CPU kernels (how it was tried without a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_TRAIN = os.path.join(ROOT, "recipes", "data", "squad_qg_chat_train.jsonl")


def build_model(path: str, hidden: int, layers: int) -> str:
    """A Llama-style causal LM with the tiny chat tokenizer (end-of-turn and EOS both stop generation)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfcoop.data import load_any_dataset
    from hfcoop.tiny import TURN_END, build_tiny_model

    rows = load_any_dataset(CHAT_TRAIN)
    texts = [m["content"] for row in rows for m in row["messages"]]
    build_tiny_model(path, texts, vocab_size=4000, n_layer=1, n_embd=32, n_positions=512, chat=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 64, 1),
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(TURN_END), tok.eos_token_id]
    for name in os.listdir(path):  # replace the GPT-2 weights, keep the tokenizer files
        if name.endswith(".safetensors") or name in ("config.json", "generation_config.json"):
            os.remove(os.path.join(path, name))
    model.save_pretrained(path)
    return path


def run_check(algorithm: str, model_path: str, device: str, steps: int, out_dir: str) -> dict:
    from peft import LoraConfig

    from hfcoop import CoTConfig, CoTTrainer, GCNConfig, GCNTrainer
    from hfcoop.data import load_any_dataset
    from hfcoop.modeling import is_quantized

    compute = "bfloat16" if device == "cuda" else "float32"
    quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": compute,
             "bnb_4bit_use_double_quant": True}  # fmt: skip
    common = dict(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=8, max_prompt_length=256,
                  max_completion_length=24, learning_rate=2e-3, logging_steps=1, report_to="none", save_strategy="no",
                  disable_tqdm=True, companion_peft=True, use_cpu=device == "cpu", bf16=device == "cuda",
                  model_init_kwargs={"quantization_config": quant, "device_map": {"": 0} if device == "cuda" else None})  # fmt: skip
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    data = load_any_dataset(CHAT_TRAIN).select(range(64))
    if algorithm == "cot":
        trainer = CoTTrainer(model_path, args=CoTConfig(mediator_learning_rate=2e-3, **common), train_dataset=data,
                             peft_config=lora)  # fmt: skip
    else:
        args = GCNConfig(num_candidates=2, discriminator_learning_rate=2e-3, **common)
        trainer = GCNTrainer(model_path, args=args, train_dataset=data, peft_config=lora)
    pair = trainer.pair
    checks: dict[str, bool] = {}
    checks["generator_4bit"] = is_quantized(pair.generator)
    checks["companion_4bit"] = is_quantized(pair.companion)
    four_bit = [m for m in pair.modules() if type(m).__name__ == "Linear4bit"]
    checks["linear4bit_on_device"] = bool(four_bit) and all(m.weight.device.type == device for m in four_bit)
    packed = {n: p.detach().clone() for n, p in pair.named_parameters() if p.dtype == torch.uint8}
    trainable = {n: p.detach().clone() for n, p in pair.named_parameters() if p.requires_grad}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    checks["losses_finite"] = len(losses) == steps and all(math.isfinite(x) for x in losses)
    after = dict(pair.named_parameters())
    moved = {n.split(".")[0] for n in trainable if not torch.equal(trainable[n], after[n])}
    checks["adapters_moved_generator_and_companion"] = moved == {"generator", "companion"}
    checks["packed_4bit_weights_unchanged"] = bool(packed) and all(torch.equal(packed[n], after[n]) for n in packed)
    # Samples: each row stops at its first EOS id (either one) or runs to the budget.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    ids, mask = trainer.sample(batch["prompt_input_ids"].to(trainer.args.device),
                               batch["prompt_attention_mask"].to(trainer.args.device))  # fmt: skip
    eos = set(trainer.eos_token_ids)
    ok = True
    for row, m in zip(ids.tolist(), mask.tolist()):
        stops = [i for i, t in enumerate(row) if t in eos]
        length = stops[0] + 1 if stops else len(row)
        ok &= m == [1] * length + [0] * (len(row) - length)
    checks["sample_masks_stop_on_any_eos"] = ok
    result = {"algorithm": algorithm, "device": device, "steps": steps, "losses": losses, "seconds": seconds,
              "checks": checks}  # fmt: skip
    if device == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def weight_memory(model_path: str, device: str) -> dict:
    """Bytes of the generator's weights in 4-bit NF4 against bf16 (``get_memory_footprint``)."""
    from hfcoop.modeling import load_causal_lm

    device_map = {"": 0} if device == "cuda" else None
    compute = "bfloat16" if device == "cuda" else "float32"
    q = load_causal_lm(model_path, init_kwargs={"device_map": device_map, "quantization_config": {
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": compute}})  # fmt: skip
    b = load_causal_lm(model_path, init_kwargs={"device_map": device_map, "dtype": "bfloat16"})
    return {"nf4_mb": q.get_memory_footprint() / 2**20, "bf16_mb": b.get_memory_footprint() / 2**20,
            "ratio": q.get_memory_footprint() / b.get_memory_footprint()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output", default=None, help="Write the results here as JSON.")
    a = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import bitsandbytes

    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(os.path.join(tmp, "model"), a.hidden, a.layers)
        results = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
                   "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None,
                   "weight_memory": weight_memory(path, a.device),
                   "runs": [run_check(alg, path, a.device, a.steps, os.path.join(tmp, alg)) for alg in ("cot", "gcn")]}  # fmt: skip
    failed = [f"{r['algorithm']}:{k}" for r in results["runs"] for k, ok in r["checks"].items() if not ok]
    results["failed"] = failed
    text = json.dumps(results, indent=2)
    print(text)
    if a.output:
        os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
        with open(a.output, "w") as f:
            f.write(text + "\n")
    print("gpu_qlora_check:", "FAILED " + ", ".join(failed) if failed else "all checks passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
