"""The algorithm registry (hfcoop.algorithms) is the one table the CLI, the benchmarks and the docs read."""

import os

import pytest
import sys

from hfcoop.algorithms import ALGORITHMS, by_label
from hfcoop.cli import _algorithm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_entries_agree_with_their_trainer_classes():
    for name, algorithm in ALGORITHMS.items():
        trainer_cls = algorithm.trainer_cls
        assert trainer_cls.algorithm == name
        assert _algorithm(name) is algorithm
        assert algorithm.config_cls is trainer_cls.config_class  # the registry's config_path names the trainer's config
        assert algorithm.title == algorithm.config_cls.algorithm_title
        argument = algorithm.companion_argument
        if algorithm.companion_source == "companion_name_or_path":  # a model companion, saved under its name
            assert argument == trainer_cls.companion_name
        assert algorithm.companion_kwargs("x") == ({} if argument is None else {argument: "x"})
    assert ALGORITHMS["mle"].companion_argument is None
    assert ALGORITHMS["genere"].companion_argument == "generators"
    assert by_label("CoT (scratch)") is ALGORITHMS["cot"]


def test_benchmarks_read_the_registry():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import common
    finally:
        sys.path.pop(0)
    for label in common.ALGORITHMS:
        assert common.trainer_classes(label) == (by_label(label).config_cls, by_label(label).trainer_cls)


def test_readme_names_every_algorithm():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert f"hfcoop train <{'|'.join(ALGORITHMS)}>" in readme  # the usage line lists the registry, in its order


def test_no_old_import_paths_are_kept():
    """Nothing was released that needs the old paths (issue 19): one place for each thing."""
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("hfcoop.genere_tasks")


def test_conditional_benchmark_scores_are_on_the_0_1_scale():
    """corpus BLEU is already 0-1 (hfcoop.metrics); the benchmark once divided it by 100 again."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import conditional_quality

    same = conditional_quality.scores(["what is the name of the rhine ?"], [["what is the name of the rhine ?"]])
    assert abs(same["bleu4"] - 1.0) < 1e-9 and abs(same["rougeL"] - 1.0) < 1e-9
    half = conditional_quality.scores(["a b c d e f"], [["a b c d x y"]])  # 1-4 gram precisions 4/6 3/5 2/4 1/3
    assert abs(half["bleu4"] - (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25) < 1e-9


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_constructor_argument_reaches_the_trainer(name, tiny_lm, coco_text, tmp_path):
    """Each XTrainer forwards its Trainer arguments (datasets, tokenizer, PEFT, callbacks, metrics hooks) by
    position to the shared base: a dropped or swapped one would be silently ignored."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoTokenizer, TrainerCallback

    algorithm = ALGORITHMS[name]
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.model_max_length = 1234  # marks this object: loading from the model path would give another value
    callback = TrainerCallback()

    def compute_metrics(prediction):
        return {}

    def preprocess_logits_for_metrics(logits, labels):
        return logits

    args = algorithm.config_cls(output_dir=str(tmp_path / "out"), max_steps=1, max_completion_length=8,
                                report_to="none", per_device_train_batch_size=2)  # fmt: skip
    companion = [lambda rng: {"text": "a dog on a mat"}] if name == "genere" else None
    trainer = algorithm.trainer_cls(
        tiny_lm, *([] if algorithm.companion_argument is None else [companion]), args=args,
        train_dataset=coco_text.select(range(6)), eval_dataset=coco_text.select(range(6, 9)),
        processing_class=tokenizer, peft_config=LoraConfig(r=2, target_modules=["c_attn"]), callbacks=[callback],
        compute_metrics=compute_metrics, preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )  # fmt: skip
    assert trainer.args is args
    assert len(trainer.train_dataset) == 6 and len(trainer.eval_dataset) == 3
    assert trainer.processing_class is tokenizer
    assert isinstance(trainer.pair.generator, PeftModel)
    assert callback in trainer.callback_handler.callbacks
    assert trainer.compute_metrics is compute_metrics
    assert trainer.preprocess_logits_for_metrics is preprocess_logits_for_metrics
