"""The path a user takes outside the checkout: an installed package, TRL's habits, the exported model, a push.

Each test runs what a new user runs (a wheel in an empty folder, TRL's flags, ``pipeline`` on the export) rather
than the repository's own shortcuts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_hfcoop_and_its_quantization_stack_prints_nothing(tmp_path):
    """bitsandbytes printed "Failed to load CPU gemm_4bit_forward from kernels-community" on every import (the
    kernels library refuses the untrusted Hub kernel; the fallback is bitsandbytes' own): nothing a user can act on."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = "import hfcoop, bitsandbytes, peft, hfcoop.trainers"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr and "publisher trust" not in done.stderr, done.stderr
    # The filter is narrow: the same logger's other messages still reach the user.
    probe = code + "; import logging; logging.getLogger('bitsandbytes.backends.cpu.ops').warning('other message')"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "other message" in done.stderr


# ------------------------------------------------------------------------------------ the installed package
SMALL = ["--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "8", "--quality_samples", "4",
         "--tiny_model_hidden", "32", "--tiny_model_layers", "1", "--tiny_model_vocab_size", "400",
         "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]  # fmt: skip


def run_installed(installed: dict[str, str], cwd, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([installed["hfcoop"], *argv], cwd=cwd, env=installed["env"], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_the_wheel_carries_recipes_and_runs_the_main_command_from_an_empty_folder(installed_hfcoop, tmp_path):
    """README's main command (`hfcoop train cot --config coco/cot_tiny`), shortened by flags, from an installed wheel
    in an empty folder: no checkout on the path, the recipe and its data read from the package."""
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run([sys.executable, "-c", "import hfcoop; print(hfcoop.__file__)"], cwd=empty,
                           env=installed_hfcoop["env"], capture_output=True, text=True)  # fmt: skip
    assert where.stdout.strip().startswith(installed_hfcoop["site"]), where.stdout + where.stderr
    listing = run_installed(installed_hfcoop, empty, "recipes")
    assert listing.returncode == 0 and "coco/cot_tiny" in listing.stdout and "zero3" in listing.stdout
    assert installed_hfcoop["site"] in listing.stdout  # the bundle inside the installed package
    done = run_installed(installed_hfcoop, empty, "train", "cot", "--config", "coco/cot_tiny", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nll_per_token" in done.stdout  # the before/after quality report ran on the bundled test captions
    out = empty / "outputs" / "cot-coco-tiny"  # the recipe's output_dir, relative to the user's folder
    assert (out / "model.safetensors").is_file() and (out / "quality.json").is_file()
    # The checkout-relative spelling works too, and a name that is neither says what to do.
    done = run_installed(installed_hfcoop, empty, "train", "mle", "--config", "recipes/coco/mle_tiny.yaml", "--dry_run",
                         "true", *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_installed(installed_hfcoop, empty, "train", "mle", "--config", "coco/nothing")
    assert done.returncode == 1 and "hfcoop recipes" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_accelerate_config_and_num_processes_launch_accelerate_like_trl(engine, installed_hfcoop, tmp_path):
    """`hfcoop train ... --accelerate_config zero3 --num_processes 2` launches accelerate itself, as `trl sft` does
    (2 CPU processes: gloo; DeepSpeed on its CPU accelerator; the launch's own flags ride along)."""
    env = {**installed_hfcoop["env"], "DS_ACCELERATOR": "cpu"}
    cmd = [installed_hfcoop["hfcoop"], "train", "cot", "--config", "coco/cot_tiny", "--accelerate_config", engine,
           "--num_processes", "2", "--mixed_precision", "no", "--use_cpu", "true", "--quality_samples", "0",
           "--output_dir", str(tmp_path / "run"), *SMALL[:2], *SMALL[2:6], *SMALL[8:]]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # 2 steps x 2 processes x 4 rows = 16 of 64 rows: epoch 0.25 (one process would reach 0.125)
    assert "'epoch': '0.25'" in done.stdout and done.stdout.count("hfcoop: generator saved") == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
    if engine == "zero3":  # really DeepSpeed: per-rank ZeRO shards in the checkpoint
        assert (tmp_path / "run" / "checkpoint-2" / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()


def test_unknown_accelerate_config_is_one_line(tmp_path):
    from hfcoop.cli import main

    with pytest.raises(SystemExit, match="--accelerate_config takes a file or one of ddp"):
        main(["train", "cot", "--config", "coco/cot_tiny", "--accelerate_config", "zero9", "--num_processes", "2"])
    with pytest.raises(SystemExit, match="--accelerate_config takes a file or one of ddp.*got zero9"):  # `=` form too
        main(["train", "cot", "--config", "coco/cot_tiny", "--accelerate_config=zero9", "--num_processes", "2"])


# ------------------------------------------------------------------------------------- TRL's flags and YAML
def test_no_argument_abbreviations():
    """`--log_completions true` was taken as `--log_completions_steps` and printed 150 lines of usage."""
    from hfcoop.cli import main

    with pytest.raises(SystemExit, match=r"hfcoop: the command line has fields hfcoop does not know: log_completions\."):
        main(["train", "cot", "--config", "coco/cot_tiny", "--log_completions", "true"])


def test_config_flag_forms(tmp_path):
    from hfcoop.cli import main, resolve_config_argument

    with pytest.raises(SystemExit, match="--config needs a value"):
        main(["train", "cot", "--config"])
    with pytest.raises(SystemExit, match="--config needs a value"):
        main(["train", "cot", "--config", "--max_steps", "2"])
    resolved = resolve_config_argument(["--max_steps", "2", "--config=coco/cot_tiny"])
    assert resolved[:2] == ["--max_steps", "2"] and resolved[2] == "--config"
    assert resolved[3].endswith(os.path.join("coco", "cot_tiny.yaml")) and os.path.isfile(resolved[3])


def test_trl_model_flags_reach_the_models(tiny_lm, tmp_path):
    """TRL's ModelConfig flags with TRL's meanings: dtype, attn_implementation, model_revision, 4-bit QLoRA with
    nf4 + nested quantization, LoRA rank / dropout / DoRA / rsLoRA / modules_to_save; TRL's dataset_test_split."""
    import torch

    from hfcoop.cli import build_trainer, load_datasets, model_arguments, parse, ScriptArguments
    from hfcoop import MLEConfig

    data = os.path.join(ROOT, "recipes", "data", "squad_qg_sample.jsonl")
    argv = ["--model_name_or_path", tiny_lm, "--dataset_name", data, "--output_dir", str(tmp_path / "o"),
            "--dtype", "bfloat16", "--attn_implementation", "eager", "--model_revision", "main", "--use_peft", "true",
            "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0", "--lora_target_modules", "c_attn",
            "--use_dora", "true", "--use_rslora", "true", "--lora_modules_to_save", "lm_head", "--max_train_samples", "8",
            "--max_completion_length", "8", "--report_to", "none"]  # fmt: skip
    script, args, model_args = parse((ScriptArguments, MLEConfig, model_arguments()), argv)
    train_ds, eval_ds = load_datasets(script)
    trainer = build_trainer("mle", script, model_args, args, train_ds, eval_ds)
    generator = trainer.pair.generator
    lora = generator.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.use_dora, lora.use_rslora) == (4, 8, 0.0, True, True)
    assert set(lora.target_modules) == {"c_attn"} and "lm_head" in lora.modules_to_save
    base = generator.get_base_model()
    assert base.dtype == torch.bfloat16 and base.config._attn_implementation == "eager"
    # 4-bit: TRL's get_quantization_config, nested quantization and the quant type reach bitsandbytes.
    argv4 = [a for a in argv if a not in ("--use_dora", "--use_rslora")]
    argv4 = [*argv4[: argv4.index("true", argv4.index("--use_peft")) + 1], "--load_in_4bit", "true",
             "--bnb_4bit_quant_type", "fp4", "--use_bnb_nested_quant", "true", "--dtype", "float32",
             "--lora_target_modules", "c_attn", "--output_dir", str(tmp_path / "q")]  # fmt: skip
    script, args, model_args = parse((ScriptArguments, MLEConfig, model_arguments()), argv4)
    trainer = build_trainer("mle", script, model_args, args, train_ds, eval_ds)
    quant = trainer.pair.generator.get_base_model().config.quantization_config
    get = quant.get if isinstance(quant, dict) else lambda k: getattr(quant, k)
    assert get("load_in_4bit") and get("bnb_4bit_quant_type") == "fp4" and get("bnb_4bit_use_double_quant")
    script, args, model_args = parse((ScriptArguments, MLEConfig, model_arguments()),
                                     [*argv[:4], "--load_in_8bit", "true", "--output_dir", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="need use_peft"):
        build_trainer("mle", script, model_args, args, train_ds, eval_ds)


TRL_SFT_YAML = """\
# A TRL user's SFT recipe (trl sft --config sft.yaml), a Hub model swapped for a local one
env:
  TOKENIZERS_PARALLELISM: "false"
model_name_or_path: {model}
model_revision: main
dtype: float32
attn_implementation: eager
dataset_name: {data}
dataset_train_split: train
learning_rate: 2.0e-4
lr_scheduler_type: cosine
warmup_steps: 0.1
max_steps: 2
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
gradient_checkpointing: true
logging_steps: 1
save_strategy: "no"
eval_strategy: "no"
seed: 42
use_peft: true
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules: c_attn
output_dir: {out}
report_to: none
"""


def test_a_trl_sft_yaml_runs_under_hfcoop_train_mle(tiny_lm, tmp_path):
    """TRL's SFT YAML (ModelConfig + ScriptArguments + SFTConfig fields that hfcoop has) runs unchanged; TRL-only
    fields are refused in one line saying what hfcoop does instead."""
    import json

    from hfcoop.cli import main

    data = os.path.join(ROOT, "recipes", "data", "coco_train_sample.txt")
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(TRL_SFT_YAML.format(model=tiny_lm, data=data, out=tmp_path / "sft"))
    main(["train", "mle", "--config", str(recipe), "--quality_samples", "0", "--max_train_samples", "64"])
    adapter = json.loads((tmp_path / "sft" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and adapter["target_modules"] == ["c_attn"]
    state = json.loads((tmp_path / "sft" / "hfcoop_training_args.json").read_text())
    assert state["gradient_accumulation_steps"] == 2 and state["model_init_kwargs"]["attn_implementation"] == "eager"
    recipe.write_text(TRL_SFT_YAML.format(model=tiny_lm, data=data, out=tmp_path / "sft2") + "max_length: 512\npacking: true\n")
    with pytest.raises(SystemExit, match=r"fields hfcoop does not know: max_length, packing \(max_length: .*"
                                         r"max_prompt_length \+ max_completion_length; packing: .*\)"):
        main(["train", "mle", "--config", str(recipe)])


def test_the_readme_python_example_runs_as_written(tiny_lm, tmp_path, monkeypatch):
    """README's Python example, executed: only what this offline CPU machine cannot do is swapped (the Hub models for
    the tiny local one, bf16 and 2000 steps for fp32 and 2, the Hub for a fake one)."""
    import re

    import transformers.trainer

    from test_hub import FakeHub

    text = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"```python\n(.+?)\n```", text, re.S).group(1)
    swaps = {'"openai-community/gpt2-medium"': repr(tiny_lm), '"openai-community/gpt2"': repr(tiny_lm),
             "max_steps=2000, bf16=True": "max_steps=2, bf16=False", "per_device_train_batch_size=32": "per_device_train_batch_size=4"}  # fmt: skip
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    monkeypatch.setenv("HF_TOKEN", "hf_readme_example_token")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "gpt2-cot-coco" / "model.safetensors").is_file()
    assert "model.safetensors" in hub.uploads[-1]["files"] and "README.md" in hub.uploads[-1]["files"]
