"""The two update orders on CoT's exact toy (issue 20): exact JSD(G, p_data) after a number of generator updates and
CPU / wall time per generator update.

The toy is tests/toy.py's (85 enumerable outcomes) with the settings of tests/test_cot_trainer.py's
``test_cot_reduces_exact_jsd_and_mediator_tracks_mixture`` (Adam 1e-2 constant, batch 64, 3 completion tokens). The
papers' order needs (N_m + 1) optimizer steps per generator update, the simultaneous order N_m.

    OMP_NUM_THREADS=1 python benchmarks/update_order_toy.py --generator-updates 100 --seeds 42 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from toy import build_toy_model, data_distribution, jsd, model_distribution, toy_dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from hfcoop import CoTConfig, CoTTrainer  # noqa: E402


def run(path: str, order: str, generator_updates: int, seed: int, mediator_steps: int, out: str) -> dict:
    tok = AutoTokenizer.from_pretrained(path)
    per_cycle = mediator_steps + (1 if order == "papers" else 0)
    args = CoTConfig(output_dir=out, max_steps=generator_updates * per_cycle, per_device_train_batch_size=64,
                     learning_rate=1e-2, max_completion_length=3, lr_scheduler_type="constant", logging_steps=50,
                     report_to="none", save_strategy="no", disable_tqdm=True, seed=seed, update_order=order,
                     mediator_steps=mediator_steps)  # fmt: skip
    trainer = CoTTrainer(path, train_dataset=toy_dataset(), args=args)
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.train()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    updates = generator_updates  # max_steps / per_cycle, by construction of the cycle
    return {"order": order, "seed": seed, "mediator_steps": mediator_steps, "optimizer_steps": args.max_steps,
            "generator_updates": updates, "jsd": jsd(model_distribution(trainer.pair.generator, tok),
                                                        data_distribution(tok)),
            "cpu_s_per_generator_update": cpu / updates, "wall_s_per_generator_update": wall / updates}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator-updates", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--mediator-steps", type=int, default=1)
    parser.add_argument("--orders", nargs="+", default=["papers", "simultaneous"])
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_toy_model(os.path.join(tmp, "toy"))
        jsd0 = jsd(model_distribution(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)),
                   data_distribution(AutoTokenizer.from_pretrained(path)))  # fmt: skip
        print(json.dumps({"jsd_at_start": jsd0}), flush=True)
        for seed in a.seeds:  # interleaved: the two orders see the same machine load
            for order in a.orders:
                print(json.dumps(run(path, order, a.generator_updates, seed, a.mediator_steps,
                                     os.path.join(tmp, f"{order}{seed}"))), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
