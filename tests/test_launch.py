"""accelerate configs shipped in recipes/accelerate: all load and validate; the DDP one launches 2 CPU processes."""

import glob
import os
import subprocess
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {os.path.basename(p): p for p in glob.glob(os.path.join(ROOT, "recipes", "accelerate", "*.yaml"))}


def test_the_five_launch_configs_exist_and_validate():
    expected = {
        "single_gpu_bf16.yaml": DistributedType.NO,
        "multi_gpu_ddp.yaml": DistributedType.MULTI_GPU,
        "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
        "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
        "fsdp.yaml": DistributedType.FSDP,
        "multi_node.yaml": DistributedType.MULTI_GPU,  # 2 machines; run on localhost in tests/test_sharded.py
    }
    assert set(CONFIGS) == set(expected)
    for name, kind in expected.items():
        config = load_config_from_file(CONFIGS[name])  # accelerate's own parser and validation
        assert config.distributed_type == kind, name
        assert config.mixed_precision == "bf16"
    assert load_config_from_file(CONFIGS["deepspeed_zero2.yaml"]).deepspeed_config["zero_stage"] == 2
    zero3 = load_config_from_file(CONFIGS["deepspeed_zero3.yaml"]).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True  # exported model is whole
    fsdp = load_config_from_file(CONFIGS["fsdp.yaml"]).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"])
def test_sharded_configs_build_accelerate_plugins(name):
    """accelerate turns each config into its plugin (what `accelerate launch` hands the Trainer)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    config = load_config_from_file(CONFIGS[name])
    if config.distributed_type == DistributedType.FSDP:
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=config.fsdp_config["fsdp_version"],
            state_dict_type=config.fsdp_config["fsdp_state_dict_type"],
            reshard_after_forward=config.fsdp_config["fsdp_reshard_after_forward"],
        )
        assert plugin.fsdp_version == 2
    else:
        assert config.deepspeed_config["offload_param_device"] == "none"


def test_cli_under_accelerate_launch_with_the_ddp_config(tmp_path):
    data = os.path.join(ROOT, "recipes", "data")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIGS["multi_gpu_ddp.yaml"],
        "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "hfcoop.cli", "train", "cot", "--config", os.path.join(ROOT, "recipes", "coco", "cot_tiny.yaml"),
        "--dataset_name", os.path.join(data, "coco_train_sample.txt"),
        "--eval_dataset_name", os.path.join(data, "coco_test_sample.txt"),
        "--max_train_samples", "128", "--max_eval_samples", "32", "--quality_samples", "8",
        "--tiny_model_hidden", "32", "--tiny_model_layers", "1", "--tiny_model_vocab_size", "500",
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_completion_length", "6",
        "--output_dir", str(tmp_path / "run"), "--disable_tqdm", "true", "--use_cpu", "true",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    # 3 steps x 2 processes x 4 rows = 24 of 128 rows: epoch 0.1875 (one process would reach 0.09375)
    assert "'epoch': '0.1875'" in result.stdout
    assert result.stdout.count("hfcoop: generator saved") == 1  # the main process alone reports and saves
    assert os.path.isfile(tmp_path / "run" / "model.safetensors")
