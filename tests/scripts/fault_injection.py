"""Kills a `hfcoop train` run with SIGKILL at chosen points and resumes it each time; the end must equal an
uninterrupted run's bit for bit (issue 21, deliverable 6). Driven by tests/test_fault_injection.py.

    python fault_injection.py <cot|genere> <workdir>

The parent imports everything once, then each run (the reference, each kill, the last resume) is a forked child that
calls ``hfcoop.cli.main`` as the command line would: a kill costs no interpreter start. A kill point is (step,
phase): the child patches the function of that phase to ``SIGKILL`` itself when it runs for that step, so every
point is hit exactly (the parent checks the child died of SIGKILL). Phases, in the order they happen in a step:

  step        inside the step's training_step (before its optimizer update)
  weights     the checkpoint's generator weights written, its companion not
  optimizer   optimizer.pt written, scheduler / RNG / trainer state not
  state       trainer_state.json half written (every other file written, the completion marker not)
  marker      all written, the marker not yet renamed into place
  prune       the new checkpoint saved, an old one being deleted (hfcoop: its marker removed first)
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import hfcoop.cli  # noqa: E402
import hfcoop.guards  # noqa: E402
import hfcoop.trainers.base as base  # noqa: E402
from hfcoop.algorithms import ALGORITHMS  # noqa: E402,F401  (every trainer imported before the forks)

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "recipes", "data")
STEPS = 10
POINTS = [  # (step, phase): 20 kills over a 10-step run that saves every step, two per step
    (1, "step"), (1, "weights"), (2, "optimizer"), (2, "marker"), (3, "step"), (3, "prune"),
    (4, "weights"), (4, "state"), (5, "step"), (5, "optimizer"), (6, "marker"), (6, "prune"),
    (7, "weights"), (7, "state"), (8, "step"), (8, "optimizer"), (9, "marker"), (9, "prune"),
    (10, "step"), (10, "weights"),
]  # fmt: skip


def argv(algorithm: str, out: str) -> list[str]:
    common = ["--tiny_model_hidden", "32", "--tiny_model_layers", "1", "--quality_samples", "0", "--max_steps",
              str(STEPS), "--save_steps", "1", "--save_total_limit", "2", "--logging_steps", "1", "--output_dir", out,
              "--disable_tqdm", "true", "--report_to", "none", "--per_device_train_batch_size", "4",
              "--dataloader_num_workers", "0"]  # fmt: skip
    if algorithm == "cot":
        return ["train", "cot", "--config", os.path.join(ROOT, "recipes", "coco", "cot_tiny.yaml"), *common,
                "--dataset_name", os.path.join(DATA, "coco_train_sample.txt"), "--max_train_samples", "64",
                "--eval_dataset_name", os.path.join(DATA, "coco_test_sample.txt"), "--max_eval_samples", "8",
                "--tiny_model_vocab_size", "400", "--max_completion_length", "8", "--save_companion", "true"]  # fmt: skip
    return ["train", "genere", "--config", os.path.join(ROOT, "recipes", "genere", "genere_tiny.yaml"), *common,
            "--dataset_name", os.path.join(DATA, "equations_train.jsonl"), "--max_train_samples", "64",
            "--eval_dataset_name", os.path.join(DATA, "equations_test.jsonl"), "--max_eval_samples", "8",
            "--mle_warmup_steps", "3", "--max_completion_length", "8", "--max_prompt_length", "16"]  # fmt: skip


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(step: int, phase: str) -> None:
    """Patches the function of ``phase`` to SIGKILL this (child) process when it runs for ``step``."""
    folder = f"checkpoint-{step}"
    if phase == "step":
        original = base.CooperativeTrainer.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step + 1 == step:
                die()
            return original(self, *args, **kwargs)

        base.CooperativeTrainer.training_step = training_step
    elif phase == "weights":
        original_module = base.save_module

        def save_module(module, output_dir, *args, **kwargs):
            result = original_module(module, output_dir, *args, **kwargs)
            if os.path.basename(os.path.normpath(output_dir)) == folder:
                die()  # the generator's weights are on disk, the companion's are not
            return result

        base.save_module = save_module
    elif phase in ("optimizer", "state"):
        name = "optimizer.pt" if phase == "optimizer" else "trainer_state.json"
        from transformers import TrainerState

        original_save, original_json = torch.save, TrainerState.save_to_json

        def save(obj, f, *args, **kwargs):
            original_save(obj, f, *args, **kwargs)
            if str(f).endswith(os.path.join(folder, name)):
                die()

        def save_to_json(self, path):
            if not str(path).endswith(os.path.join(folder, name)):
                return original_json(self, path)
            original_json(self, path)
            text = open(path).read()
            with open(path, "w") as f:
                f.write(text[: len(text) // 2])  # killed while writing it: half of it on disk
            die()

        torch.save, TrainerState.save_to_json = save, save_to_json
    elif phase == "marker":
        original_mark = base.mark_checkpoint_complete

        def mark_checkpoint_complete(checkpoint_dir, *args, **kwargs):
            if os.path.basename(os.path.normpath(checkpoint_dir)) == folder:
                with open(os.path.join(checkpoint_dir, hfcoop.guards.CHECKPOINT_MARKER + ".tmp"), "w") as f:
                    f.write('{"global_step": ')  # the marker half-written, not yet renamed into place
                die()
            return original_mark(checkpoint_dir, *args, **kwargs)

        base.mark_checkpoint_complete = mark_checkpoint_complete
    elif phase == "prune":
        import shutil

        original_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            path = os.path.normpath(str(path))
            if os.path.basename(path).startswith("checkpoint-") and os.path.isdir(
                os.path.join(os.path.dirname(path), folder)
            ):
                die()  # deleting an old checkpoint after checkpoint-<step> was saved (hfcoop: its marker is gone)
            return original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    else:
        raise ValueError(phase)


def child(args: list[str], point: tuple[int, str] | None = None) -> int:
    """Runs ``hfcoop <args>`` in a forked child (armed with a kill point); returns its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if point is not None:
                arm(*point)
            sys.stdout = open(os.devnull, "w")  # the runs' logs; errors still reach stderr
            hfcoop.cli.main(args)
            code = 0
        except SystemExit as exit_:
            print(f"child exit: {exit_.code}", file=sys.stderr)
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException as err:  # noqa: BLE001
            print(f"child error: {err!r}", file=sys.stderr)
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def tensors(folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder`` (not its checkpoints or tiny base model), keyed by
    file and name."""
    found = {}
    for root, folders, names in os.walk(folder):
        folders[:] = [d for d in folders if not d.startswith(("checkpoint-", "tiny-base-model-"))]
        for name in sorted(n for n in names if n.endswith(".safetensors")):
            path = os.path.join(root, name)
            for key, value in load_file(path).items():
                found[f"{os.path.relpath(path, folder)}:{key}"] = value
    return found


def main() -> None:
    algorithm, workdir = sys.argv[1], sys.argv[2]
    ref, cut = os.path.join(workdir, "reference"), os.path.join(workdir, "killed")
    status = child(argv(algorithm, ref))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"reference run failed: {status}"
    for point in POINTS:
        resume = hfcoop.guards.complete_checkpoints(cut)
        extra = ["--resume_from_checkpoint", "true"] if resume else ["--overwrite_output_dir", "true"]
        status = child(argv(algorithm, cut) + extra, point)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point} did not kill: {status}"
        complete = hfcoop.guards.complete_checkpoints(cut)
        print(f"killed at step {point[0]} ({point[1]}); resumable: {[os.path.basename(c) for c in complete]}")
    status = child(argv(algorithm, cut) + ["--resume_from_checkpoint", "true"])
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"final resume failed: {status}"
    finals = {"export": (ref, cut), "checkpoint": (os.path.join(ref, f"checkpoint-{STEPS}"),
                                                   os.path.join(cut, f"checkpoint-{STEPS}"))}  # fmt: skip
    for what, (a, b) in finals.items():
        ta, tb = tensors(a), tensors(b)
        roles = sorted({k.split(":")[0] for k in ta})  # generator and companion (GENERE: its mixture state)
        assert ta.keys() == tb.keys() and len(roles) >= (2 if what == "checkpoint" or algorithm == "cot" else 1), roles
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"{what}: {different[:5]}"
        print(f"{what}: {len(ta)} tensors in {roles} equal bit for bit")
    from hfcoop.cli import cache_dir  # the CLI's tiny base model lives in the cache, not in output_dir

    base_model = next(d for d in os.listdir(cache_dir()) if d.startswith("tiny-base-model-"))
    start = load_file(os.path.join(cache_dir(), base_model, "model.safetensors"))
    trained = load_file(os.path.join(ref, "model.safetensors"))
    assert any(not torch.equal(start[k], trained[k]) for k in start), "the generator never moved: nothing compared"
    if algorithm == "genere":  # the learned mixture of the export
        mixture = [open(os.path.join(d, "genere_mixture.json")).read() for d in (ref, cut)]
        assert mixture[0] == mixture[1], mixture
    print(f"FAULT INJECTION OK: {len(POINTS)} kills")


if __name__ == "__main__":
    main()
