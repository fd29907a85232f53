"""`hfcoop train <algorithm>` for several algorithms inside one `accelerate launch` (run by tests/test_sharded.py).

The launch config decides the engine (DDP, DeepSpeed ZeRO-2/3, FSDP2). Per algorithm: an uninterrupted 3-step run
that checkpoints at step 2 and exports generator + companion, then a run resumed from that checkpoint-2 that exports
the same way. One launch serves every algorithm so the process start, imports and DeepSpeed's extension load are
paid once per engine.

usage: sharded_cli.py MODEL_DIR TRAIN_TEXT OUTPUT_ROOT ALGORITHM [ALGORITHM ...]
"""

from __future__ import annotations

import os
import random
import sys

CAPTIONS = [
    "a man riding a bike down a street",
    "a cat sitting on top of a wooden table",
    "two people standing next to a red bus",
]


def caption_words(rng: random.Random) -> dict[str, str]:
    """GENERE black box: a caption of the training vocabulary."""
    return {"text": rng.choice(CAPTIONS)}


def shuffled_caption(rng: random.Random) -> dict[str, str]:
    """GENERE black box: the same words out of order (a worse generator)."""
    words = rng.choice(CAPTIONS).split()
    rng.shuffle(words)
    return {"text": " ".join(words)}


GENERATORS = [caption_words, shuffled_caption]


def force_fsdp_on_cpu() -> None:
    """TEST-ONLY switch past accelerate's CPU check: `accelerate launch` with an FSDP config on a machine without a
    GPU makes the state MULTI_CPU (plain DDP over gloo) and never FSDP, although FSDP2's `fully_shard` runs on CPU
    with gloo. This turns such a state into FSDP with the launch's FSDP plugin, so the CPU test exercises the
    sharded code path that a GPU launch takes. Never used by hfcoop itself."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # Every later AcceleratorState() re-copies PartialState's fields: make the switch stick there too.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = __init__


ALGORITHM_FLAGS = {
    "mle": [],
    "cot": [],  # mediator = None: the default copy of the generator (partitioned under ZeRO-3)
    "psi_mle": ["--ratio_learning_rate", "0.5"],
    "gcn": ["--mle_weight", "0.5", "--discriminator_learning_rate", "0.5"],
    # MCTS proposals: D scores prefixes inside the generator's sampling context (ZeRO-3: both gathered)
    "gcn_mcts": ["--mle_weight", "0.5", "--discriminator_learning_rate", "0.5", "--sampler", "mcts",
                 "--num_simulations", "4", "--mcts_top_k", "3"],
    "genere": ["--generators", "sharded_cli:GENERATORS", "--generative_weight", "1.0", "--mixture_learning_rate",
               "0.05"],
}  # fmt: skip


def main(model: str, data: str, root: str, algorithms: list[str]) -> None:
    if os.environ.get("HFCOOP_TEST_FSDP_ON_CPU") == "1":
        force_fsdp_on_cpu()
    from hfcoop.cli import train

    # SGD (not Adam: Adam's first steps turn rounding noise into lr-sized differences, ARCHITECTURE.md) with momentum,
    # so a resume must restore optimizer state (and FSDP2's optimizer load refuses the empty state of plain SGD).
    common = [
        "--model_name_or_path", model, "--dataset_name", data, "--max_train_samples", "64", "--quality_samples", "0",
        "--max_steps", "3", "--save_steps", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "6",
        "--optim", "sgd", "--optim_args", "momentum=0.9", "--learning_rate", "0.5", "--logging_steps", "1",
        "--save_companion", "true",
        # No clipping: DDP clips the generator and the companion each (per-model norms) while DeepSpeed and FSDP clip
        # their joint norm inside the engine, so with clipping on the runs would differ by policy, not by engine.
        "--max_grad_norm", "0",
        "--disable_tqdm", "true", "--use_cpu", "true", "--report_to", "none", "--seed", "0",
    ]  # fmt: skip
    for algorithm in algorithms:
        flags = [algorithm.removesuffix("_mcts"), *common, *ALGORITHM_FLAGS[algorithm]]
        full = os.path.join(root, algorithm, "full")
        train([*flags, "--output_dir", full])
        train([*flags, "--output_dir", os.path.join(root, algorithm, "resumed"),
               "--resume_from_checkpoint", os.path.join(full, "checkpoint-2")])  # fmt: skip
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print("WORLD_SIZE", dist.get_world_size() if dist.is_initialized() else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
