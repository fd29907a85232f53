"""``hfcoop env``: the versions and devices to paste into a bug report (like ``trl env``); also the model card's
framework versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

# The libraries a run's results depend on, in the order a reader looks for them.
FRAMEWORKS = ("hfcoop", "transformers", "torch", "accelerate", "trl", "peft", "datasets", "tokenizers", "evaluate",
              "safetensors", "deepspeed", "bitsandbytes", "sacrebleu", "rouge-score")  # fmt: skip


def framework_versions() -> dict[str, str]:
    """Installed versions of :data:`FRAMEWORKS` (absent ones left out)."""
    found = {}
    for name in FRAMEWORKS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def devices() -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x CUDA: " + ", ".join(names)
    if torch.backends.mps.is_available():
        return "MPS"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "XPU: " + ", ".join(torch.xpu.get_device_name(i) for i in range(torch.xpu.device_count()))
    return f"cpu ({os.cpu_count()} cores)"


def environment_info() -> dict[str, str]:
    info = {"Platform": platform.platform(), "Python": platform.python_version(), "Accelerator(s)": devices()}
    import torch

    if torch.cuda.is_available():
        info["CUDA"] = str(torch.version.cuda)
    info.update({f"{name}": v for name, v in framework_versions().items()})
    try:
        from accelerate.commands.config import default_config_file

        info["accelerate default config"] = default_config_file if os.path.isfile(default_config_file) else "not found"
    except ImportError:
        pass
    info["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "unset")
    return info


def print_env() -> dict[str, str]:
    info = environment_info()
    print("Copy-and-paste the text below in your GitHub issue.\n")
    print("\n".join(f"- {key}: {value}" for key, value in info.items()))
    return info
