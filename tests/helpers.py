"""Test doubles shared by several tests."""

from __future__ import annotations

import os
import subprocess
import sys

from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from hfcoop import CoTTrainer
from hfcoop.data import pad_right

TESTS = os.path.dirname(os.path.abspath(__file__))


class DeterministicSampleCoT(CoTTrainer):
    """CoT whose "samples" are a fixed function of each prompt (its tokens reversed, then EOS).

    Sampling draws from a per-(rank, step, call) RNG stream, so runs that split the same global batch
    differently (gradient accumulation, DDP) draw different samples; with this double the samples depend on
    the rows alone and the runs must agree to floating-point tolerance.
    """

    def sample(self, prompt_ids, prompt_mask, num_return_sequences=1):
        eos = self.processing_class.eos_token_id
        rows = [ids[m.bool()].flip(0).tolist()[:2] + [eos] for ids, m in zip(prompt_ids, prompt_mask)]
        ids, mask = pad_right(rows, self.processing_class.pad_token_id)
        return ids.to(prompt_ids.device), mask.to(prompt_ids.device)


def state_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> float:
    """Largest absolute difference between two state dicts with the same keys (asserts the keys match)."""
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


class StopAfter(TrainerCallback):
    """Ends training after ``step`` (after its checkpoint is written), like a job killed there.

    Stopping this way keeps ``max_steps`` (hence the learning-rate schedule) equal to the uninterrupted run's.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def launch(script: str, script_args: list[str], num_processes: int) -> str:
    """Runs ``script`` as 1 plain process or 2 gloo DDP processes under ``accelerate launch``; returns stdout.

    The script must print ``WORLD_SIZE <n>`` from its main process, which is checked.
    """
    if num_processes == 1:
        cmd = [sys.executable, script, *script_args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script, *script_args]  # fmt: skip
    # This checkout's hfcoop, not whichever copy is installed (an editable install may point at another tree).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([TESTS, os.path.dirname(TESTS)])}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"WORLD_SIZE {num_processes}" in result.stdout, result.stdout[-2000:]
    return result.stdout


def assert_resume_is_bit_identical(run: Callable[..., Any], tmp_path: Any, model_path: str) -> None:
    """``run(out, resume=None, callbacks=None) -> pair`` trains 4 steps (checkpointing every 2 when ``out == "cut"``).

    A run killed after step 2 and resumed from ``checkpoint-2`` must end with the uninterrupted run's generator and
    companion, bit for bit, and the generator must have moved (else the comparison proves nothing).
    """
    full = run("full")
    run("cut", callbacks=[StopAfter(2)])
    resumed = run("cut", resume=str(tmp_path / "cut" / "checkpoint-2"))
    for a, b in ((full.generator, resumed.generator), (full.companion, resumed.companion)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    init = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    assert max(float((full.generator.state_dict()[k] - init[k]).abs().max()) for k in init) > 1e-4


def row_keyed_genere_gamma(model_path: str, output_dir: str, per_device_batch: int, accumulation: int) -> dict:
    """Two optimizer steps of GENERE over the same 32 rows, split as asked; returns γ and µ after them.

    The rows' "generated" copies are the data rows themselves, each with a perturbation Δ that is a fixed function
    of its tokens (GENERE's mixing RNG is per process, so real mixing would draw other rows in other layouts). The
    LM's learning rate is 0: every layout scores the rows with the same model, and γ may differ only by rounding.
    """
    from datasets import Dataset

    from conftest import coco_lines
    from hfcoop import GenereConfig, GenereTrainer

    class RowKeyedGenere(GenereTrainer):
        def _mix(self, inputs):
            ids, mask = inputs["completion_input_ids"], inputs["completion_mask"]
            deltas = []
            for row, m in zip(ids, mask):
                key = sum((i + 1) * t for i, t in enumerate(row[m.bool()].tolist()))
                deltas.append(torch.randn(len(self.generators), generator=torch.Generator().manual_seed(key),
                                          dtype=torch.float64))  # fmt: skip
            return inputs, list(range(ids.shape[0])), torch.stack(deltas)

    def words(rng):
        return {"text": "a man riding a bike"}

    args = GenereConfig(
        output_dir=output_dir, max_steps=2, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=accumulation, learning_rate=0.0, max_completion_length=16,
        mixture_learning_rate=0.5, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    data = Dataset.from_dict({"text": coco_lines(32)})
    trainer = RowKeyedGenere(model_path, [words, words, words], args=args, train_dataset=data)
    trainer.train()
    return {"world_size": trainer.accelerator.num_processes, "gamma": trainer.mixture_logits,
            "baseline": trainer.baseline}  # fmt: skip
