"""Trains DeterministicSampleCoT on fixed data; run under `accelerate launch` (1 or 2 processes) by the tests."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import Dataset  # noqa: E402

from conftest import coco_lines  # noqa: E402
from helpers import DeterministicSampleCoT  # noqa: E402
from hfcoop import CoTConfig  # noqa: E402

model_path, output_dir, per_device_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = coco_lines(32)
data = Dataset.from_dict(
    {"prompt": [" ".join(l.split()[:3]) for l in lines], "completion": [" ".join(l.split()[3:8]) for l in lines]}
)
args = CoTConfig(
    output_dir=output_dir, max_steps=4, per_device_train_batch_size=per_device_batch, optim="sgd", learning_rate=0.5,
    max_completion_length=6, train_sampling_strategy="sequential", save_strategy="no", report_to="none",
    logging_steps=1, disable_tqdm=True, use_cpu=True,
)  # fmt: skip
trainer = DeterministicSampleCoT(model_path, train_dataset=data, args=args)
calls = []
backward = trainer.accelerator.backward
trainer.accelerator.backward = lambda loss, **kw: (calls.append(1), backward(loss, **kw))[1]
trainer.train()
trainer.args.save_companion = True
trainer.save_model(output_dir)
if trainer.is_world_process_zero():
    print("WORLD_SIZE", trainer.accelerator.num_processes)
    print("BACKWARD_CALLS", len(calls))  # 1 per step: each step trains one model (the papers' order)
