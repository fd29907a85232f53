"""DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2 through `hfcoop train`, launched with the shipped recipes/accelerate configs.

Each engine is one 2-process CPU job (the papers' update order: each step trains one model, which the test checks) (gloo; DeepSpeed with DS_ACCELERATOR=cpu, the configs' other fields as
shipped, `--num_processes 2 --mixed_precision no` on the command line) running tests/scripts/sharded_cli.py:
per algorithm a 3-step run that checkpoints at step 2 and exports generator + companion, then a run resumed from
that checkpoint. The same script under the DDP config is the reference: losses and exported models must agree
(SGD with momentum, so rounding noise stays rounding noise; see ARCHITECTURE.md), and the resumed run must end
exactly where the uninterrupted one did (weights, companion and optimizer state restored).

Coverage (each engine's run costs a process start and ~10-20 s per algorithm, so not the full 5 x 3 matrix):
ZeRO-3 runs all five trainers (partitioned parameters: CoT's default mediator copy, the scorers built from the
generator, GENERE's mixture state on DeepSpeed resume) and GCN with MCTS proposals (D called during sampling); FSDP2 runs CoT, psi-MLE and GCN (sampling outside the
pair's forward, scorer companions); ZeRO-2 runs CoT and GENERE. `HFCOOP_SHARDED_FULL_MATRIX=1` runs all five
under every engine (what README's distributed section reports as executed).

Cost, measured on the 2-core machine while 3 other jobs shared it: 4 tests, 714 s wall, 385 s CPU (user + sys) for
the 5 launches (DDP, ZeRO-2, ZeRO-3, FSDP2, two "machines"); the first DeepSpeed launch of a machine also compiles
DeepSpeed's small C++ extension with g++ (~60 s, then cached under ~/.cache/torch_extensions).

FSDP on CPU: accelerate never turns a CPU launch into FSDP (it silently runs DDP), so for the FSDP job the driver
script applies a TEST-ONLY switch past that check (`force_fsdp_on_cpu` in tests/scripts/sharded_cli.py, enabled by
HFCOOP_TEST_FSDP_ON_CPU=1); the test asserts the checkpoint really is an FSDP one.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import deepspeed  # noqa: F401  (part of the dev extra: a missing install must fail here, not skip)
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "sharded_cli.py")
DATA = os.path.join(ROOT, "recipes", "data", "coco_train_sample.txt")
ALL = ["mle", "cot", "psi_mle", "gcn", "genere"]
FULL_MATRIX = os.environ.get("HFCOOP_SHARDED_FULL_MATRIX") == "1"
ENGINES = {  # engine: (shipped accelerate config, algorithms run under it)
    "ddp": ("multi_gpu_ddp.yaml", [*ALL, "gcn_mcts"]),
    "zero2": ("deepspeed_zero2.yaml", ALL if FULL_MATRIX else ["cot", "genere"]),
    "zero3": ("deepspeed_zero3.yaml", [*ALL, "gcn_mcts"]),  # MCTS: D called inside the generator's gathering
    "fsdp2": ("fsdp.yaml", ALL if FULL_MATRIX else ["cot", "psi_mle", "gcn"]),
}
COMPANION = {"cot": "mediator", "psi_mle": "ratio_model", "gcn": "discriminator", "gcn_mcts": "discriminator"}


@pytest.fixture(scope="module")
def launched(tiny_lm, tmp_path_factory):
    """engine -> output root of its job; each job runs once per module, when a test first needs it."""
    roots: dict[str, str] = {}

    def run(engine: str) -> str:
        if engine in roots:
            return roots[engine]
        config, algorithms = ENGINES[engine]
        root = str(tmp_path_factory.mktemp(engine))
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", os.path.join(ROOT, "recipes", "accelerate", config),
            "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
            SCRIPT, tiny_lm, DATA, root, *algorithms,
        ]  # fmt: skip
        env = job_env(HFCOOP_TEST_FSDP_ON_CPU="1" if engine == "fsdp2" else "0")
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "WORLD_SIZE 2" in result.stdout, result.stdout[-2000:]
        roots[engine] = root
        return root

    return run


def job_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    return {**env, "PYTHONPATH": os.pathsep.join([os.path.dirname(SCRIPT), ROOT]), **extra}  # this checkout's hfcoop


def step_losses(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "checkpoint-3", "trainer_state.json")) as f:
        return {h["step"]: h["loss"] for h in json.load(f)["log_history"] if "loss" in h}


def step_roles(run_dir: str) -> dict[int, str]:
    """Which model each logged step trained, from its metrics (logging every step)."""
    with open(os.path.join(run_dir, "checkpoint-3", "trainer_state.json")) as f:
        history = [h for h in json.load(f)["log_history"] if "loss" in h]
    roles = {}
    for h in history:
        trained = {k.split("/")[0] for k in h if k.split("/")[0] in ("generator", "companion") and "grad_norm" not in k}
        roles[h["step"]] = "/".join(sorted(trained))
    return roles


def weights(path: str, companion: bool = False) -> dict[str, torch.Tensor]:
    """An exported model as `from_pretrained` sees it (whole tensors, tied weights tied)."""
    cls = AutoModelForSequenceClassification if companion else AutoModelForCausalLM
    return cls.from_pretrained(path).state_dict()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k  # whole tensors, not ZeRO-3 placeholders or shards
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def assert_engine_ran(engine: str, checkpoint: str) -> None:
    """The job really used the sharded engine (not a silent DDP fallback)."""
    if engine.startswith("zero"):
        folder = os.path.join(checkpoint, "global_step2")
        assert os.path.isfile(os.path.join(folder, "zero_pp_rank_1_mp_rank_00_optim_states.pt"))  # one shard per rank
        states = "mp_rank_00_model_states.pt" if engine == "zero2" else "zero_pp_rank_0_mp_rank_00_model_states.pt"
        saved = torch.load(os.path.join(folder, states), map_location="cpu", weights_only=False)  # our own file
        assert saved["ds_config"]["zero_optimization"]["stage"] == int(engine[-1])
        assert saved["dp_world_size"] == 2
    else:
        assert os.path.isfile(os.path.join(checkpoint, "pytorch_model_fsdp.bin"))  # written only under FSDP


@pytest.mark.parametrize("engine", ["zero2", "zero3", "fsdp2"])
def test_sharded_training_matches_ddp_checkpoints_resumes_and_exports(engine, launched, tiny_lm):
    ddp, sharded = launched("ddp"), launched(engine)
    init = weights(tiny_lm)
    for algorithm in ENGINES[engine][1]:
        ref, full, resumed = (os.path.join(r, algorithm, run) for r, run in
                              ((ddp, "full"), (sharded, "full"), (sharded, "resumed")))  # fmt: skip
        assert_engine_ran(engine, os.path.join(full, "checkpoint-2"))
        # Same losses as DDP at every step; the resumed run's step 3 is the uninterrupted run's.
        ref_losses, losses = step_losses(ref), step_losses(full)
        assert sorted(losses) == [1, 2, 3]
        for step in losses:
            assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5, abs=1e-5), (algorithm, step)
        assert step_losses(resumed)[3] == pytest.approx(losses[3], rel=1e-6, abs=1e-6), algorithm
        # The papers' order, one model per step: steps 1 and 3 the companion, step 2 the generator, under every
        # engine; the generator's momentum (SGD, 0.9) must not move it in step 3 (ZeRO hands the optimizer zeros).
        if algorithm in COMPANION:
            assert step_roles(full) == {1: "companion", 2: "generator", 3: "companion"}, algorithm
            assert max_diff(weights(full), weights(os.path.join(full, "checkpoint-2"))) == 0, algorithm
        # The exported generator is a whole from_pretrained model equal to DDP's, and training moved it.
        generator = weights(full)
        assert max_diff(generator, weights(ref)) < 1e-5, algorithm
        assert max_diff(generator, init) > 1e-3, algorithm
        assert max_diff(weights(resumed), generator) < 1e-6, algorithm
        if algorithm in COMPANION:  # saved in the checkpoint, restored on resume, exported like DDP's
            name, is_scorer = COMPANION[algorithm], algorithm != "cot"
            saved = weights(os.path.join(full, "checkpoint-2", name), is_scorer)
            companion = weights(os.path.join(full, name), is_scorer)
            assert max_diff(companion, saved) > 1e-4, algorithm  # it trained after the checkpoint
            assert max_diff(companion, weights(os.path.join(ref, name), is_scorer)) < 1e-5, algorithm
            assert max_diff(weights(os.path.join(resumed, name), is_scorer), companion) < 1e-6, algorithm
        if algorithm == "genere":  # the mixture logits gamma and baseline mu: as DDP's, restored on resume
            at_2, final, after_resume, in_ddp = (
                mixture(os.path.join(full, "checkpoint-2")), mixture(full), mixture(resumed), mixture(ref)
            )
            assert final["mixture_logits"] != at_2["mixture_logits"]  # gamma moved after the checkpoint
            for other, tol in ((after_resume, 1e-9), (in_ddp, 1e-5)):
                assert other["mixture_logits"] == pytest.approx(final["mixture_logits"], abs=tol)
                assert other["baseline"] == pytest.approx(final["baseline"], abs=tol)


def mixture(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "genere_mixture.json")) as f:
        return json.load(f)


def test_two_machines_on_localhost_match_ddp(launched, tiny_lm, tmp_path):
    """recipes/accelerate/multi_node.yaml as 2 "machines" x 1 process on this host (gloo over 127.0.0.1): one
    `accelerate launch --machine_rank R` per machine, as on a real cluster. The global world is the DDP job's
    (2 processes), so CoT must train exactly like it. Both "machines" share this filesystem, as multi_node.yaml asks
    of output_dir; the checkpoint holds the RNG state that machine 1's process wrote."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(tmp_path)
    jobs = []
    for machine in (0, 1):
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", os.path.join(ROOT, "recipes", "accelerate", "multi_node.yaml"),
            "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(machine),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, tiny_lm, DATA, root, "cot",
        ]  # fmt: skip
        pipe = subprocess.PIPE
        jobs.append(subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, env=job_env(), cwd=ROOT))
    outputs = [job.communicate(timeout=1500) for job in jobs]
    for job, (out, err) in zip(jobs, outputs):
        assert job.returncode == 0, err[-4000:]
    assert "WORLD_SIZE 2" in outputs[0][0]  # machine 0 holds global rank 0
    ref, full = os.path.join(launched("ddp"), "cot", "full"), os.path.join(root, "cot", "full")
    assert os.path.isfile(os.path.join(full, "checkpoint-2", "rng_state_1.pth"))  # written by machine 1
    ref_losses, losses = step_losses(ref), step_losses(full)
    assert losses == pytest.approx(ref_losses, rel=1e-6, abs=1e-6)
    assert step_losses(os.path.join(root, "cot", "resumed"))[3] == pytest.approx(losses[3], rel=1e-6, abs=1e-6)
    assert max_diff(weights(full), weights(ref)) < 1e-6
    assert max_diff(weights(os.path.join(full, "mediator")), weights(os.path.join(ref, "mediator"))) < 1e-6
