"""Issue 21, cases 8-10: every bad input is refused in one `hfcoop:` line naming the field, row or file (and what
to set), before any sample is drawn; GENERE's `generators:` never imports code from the current folder."""

import json
import os

import pytest

from hfcoop.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_TEST = os.path.join(ROOT, "recipes", "data", "coco_test_sample.txt")


def refused(argv, capsys=None):
    """The `hfcoop:` line `main(argv)` exits with (exit code 1: a message, not 0 or argparse's 2)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    message = exc.value.code
    assert isinstance(message, str), f"exit code {message!r}: not refused with a message"
    first = message.splitlines()[0]
    assert first.startswith("hfcoop: ") and "Traceback" not in message
    return first


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ----------------------------------------------------------------------------------------------- generate
@pytest.mark.parametrize("value", ["0", "-3"])
def test_generate_refuses_a_sample_count_below_one(tiny_lm, value):
    # main: 0 drew the default 10 samples, -3 wrote 0 rows; both exit 0
    assert "`num_samples` must be at least 1" in refused(["generate", "--model_name_or_path", tiny_lm,
                                                          "--num_samples", value])  # fmt: skip


def test_generate_refuses_batch_size_zero_before_loading_the_model(tmp_path):
    # main: "range() arg 3 must not be zero" after loading the model; here the model path need not even exist
    line = refused(["generate", "--model_name_or_path", str(tmp_path / "nothing"), "--batch_size", "0"])
    assert "`batch_size` must be at least 1, got 0" in line


def test_generate_budget_beyond_the_model_says_what_to_set(tiny_lm):
    # 64 positions: a 60-token completion leaves 4 prompt tokens (main: IndexError inside the forward)
    line = refused(["generate", "--model_name_or_path", tiny_lm, "--max_new_tokens", "60", "--max_prompt_length", "10"])
    assert "set --max_prompt_length to at most 4" in line
    line = refused(["generate", "--model_name_or_path", tiny_lm, "--max_new_tokens", "100000"])
    assert "set --max_new_tokens to at most 63" in line


@pytest.mark.parametrize("kind", ["folder", "missing_parent"])
def test_generate_refuses_a_bad_output_file_before_sampling(tiny_lm, tmp_path, kind, monkeypatch):
    import hfcoop.sampling

    drawn = []
    monkeypatch.setattr(hfcoop.sampling, "sample_completions", lambda *a, **k: drawn.append(1))
    target = str(tmp_path) if kind == "folder" else str(tmp_path / "no" / "such" / "out.jsonl")
    line = refused(["generate", "--model_name_or_path", tiny_lm, "--num_samples", "2", "--output_file", target])
    assert "--output_file" in line and ("is a folder" in line or "does not exist" in line)
    assert not drawn  # main: refused only after every sample was drawn


def test_generate_names_a_non_string_completion_in_a_middle_row(tiny_lm, tmp_path):
    rows = [{"prompt": "a dog", "completion": "runs"}] * 3 + [{"prompt": "a cat", "completion": 5}]
    data = write_jsonl(tmp_path / "d.jsonl", rows + [{"prompt": "a man", "completion": "sits"}])
    # main: exit 0, the 5 written as the row's reference
    assert "row 3 has a non-string 'completion' (int: 5)" in refused(["generate", "--model_name_or_path", tiny_lm,
                                                                       "--dataset_name", data])  # fmt: skip


# ----------------------------------------------------------------------------------------------- evaluate
def test_evaluate_refuses_num_samples_zero_and_a_budget_beyond_the_model(tiny_lm):
    base = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset_name", COCO_TEST, "--max_eval_samples", "8"]
    assert "`num_samples` must be at least 1, got 0" in refused(base + ["--num_samples", "0"])  # main: "no predictions"
    # main: "IndexError: index out of range in self"
    assert "set max_new_tokens to at most 63" in refused(base + ["--num_samples", "2", "--max_new_tokens", "100000"])


def test_evaluate_refuses_predictions_with_references_on_some_rows_only(tmp_path):
    rows = [{"completion": "a b c", "reference": "a b"}, {"completion": "a c", "reference": "a b"},
            {"completion": "a d"}]  # fmt: skip
    # main: scored as unconditional samples against --dataset_name, exit 0
    line = refused(["evaluate", "--predictions_file", write_jsonl(tmp_path / "p.jsonl", rows),
                    "--dataset_name", COCO_TEST])  # fmt: skip
    assert "line 3: no `reference`, but line 1 has one" in line


@pytest.mark.parametrize("value", [5, None, ["x"], {"a": 1}])
@pytest.mark.parametrize("key", ["completion", "reference"])
def test_evaluate_names_a_non_string_prediction(tmp_path, key, value):
    rows = [{"completion": "a b", "reference": "a b"}, {"completion": "a b", "reference": "a c"}]
    rows[1][key] = value
    line = refused(["evaluate", "--predictions_file", write_jsonl(tmp_path / "p.jsonl", rows)])
    assert f"line 2: `{key}` must be a string, got {json.dumps(value)}" in line  # main: AttributeError ... 'strip'


# ----------------------------------------------------------------------------------------------- sweep
def test_sweep_without_a_dataset_says_so(tmp_path):
    # main: "stat: path should be string, bytes, os.PathLike or integer, not NoneType"
    assert "sweep needs --dataset_name" in refused(["sweep", "--model_name_or_path", str(tmp_path / "m"),
                                                    "--output_dir", str(tmp_path / "sweep")])  # fmt: skip


def test_sweep_refuses_an_unknown_metric_before_sampling(tiny_lm, tmp_path):
    line = refused(["sweep", "--model_name_or_path", tiny_lm, "--dataset_name", COCO_TEST, "--quality_metric", "bleu",
                    "--output_dir", str(tmp_path / "sweep")])  # fmt: skip
    assert "--quality_metric 'bleu' is not a metric of this data" in line and "bleu-4" in line


# ----------------------------------------------------------------------------------------------- data
def test_a_missing_local_data_file_is_named_as_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("train.jsonl", "./data", "data/sub/set"):
        line = refused(["evaluate", "--predictions_file", write_jsonl(tmp_path / "p.jsonl", [{"completion": "a"}] * 2),
                        "--dataset_name", name])  # fmt: skip
        assert f"'{name}' does not exist" in line and "Hub" not in line.split("does not exist")[0]  # main: Couldn't reach


def test_training_names_a_non_string_completion_in_a_middle_row(tiny_lm, tmp_path):
    rows = [{"prompt": "a dog", "completion": "runs"}] * 5 + [{"prompt": "a cat", "completion": 7}]
    data = write_jsonl(tmp_path / "d.jsonl", rows + [{"prompt": "a man", "completion": "sits"}])
    line = refused(["train", "mle", "--model_name_or_path", tiny_lm, "--dataset_name", data, "--output_dir",
                    str(tmp_path / "out"), "--report_to", "none"])  # fmt: skip
    assert "train_dataset row 5 has a non-string 'completion' (int: 7)" in line  # main: ArrowNotImplementedError


def test_conversational_rows_are_checked_past_the_first(tmp_path):
    from datasets import load_dataset

    from hfcoop.data import validate_dataset

    chat = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}
    data = write_jsonl(tmp_path / "c.jsonl", [chat, chat, {"prompt": "hi", "completion": "yo"}])
    dataset = load_dataset("json", data_files={"data": data}, split="data")
    with pytest.raises(ValueError, match="train_dataset row 2 column 'prompt' must hold a non-empty list"):
        validate_dataset(dataset, "train_dataset")


# ----------------------------------------------------------------------------------------------- recipe values
@pytest.mark.parametrize(
    "yaml_line, field",
    [("max_steps: 2.5", "max_steps"), ("learning_rate: [1]", "learning_rate"), ("seed: null", "seed"),
     ("lr_scheduler_type: cosine_decay", "lr_scheduler_type"), ("per_device_train_batch_size: abc",
     "per_device_train_batch_size"), ("tiny_model: maybe", "tiny_model")],
)  # fmt: skip
def test_recipe_values_of_the_wrong_type_name_their_field(tmp_path, yaml_line, field):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{yaml_line}\ndataset_name: {COCO_TEST}\ntiny_model: true\n" if field != "tiny_model" else
                      f"{yaml_line}\ndataset_name: {COCO_TEST}\n")  # fmt: skip
    # main: 2.5 -> "'float' object cannot be interpreted as an integer" deep in the loop; [1] -> torch's "'<=' not
    # supported"; null -> "int() argument must be ..."; none named the field
    line = refused(["train", "mle", "--config", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert f"`{field}` must be" in line and str(recipe) in line


def test_recipe_strings_argparse_converts_are_accepted():
    from hfcoop.cli import ScriptArguments
    from hfcoop.trainers.mle import MLEConfig
    from hfcoop.validation import check_recipe_values

    check_recipe_values((ScriptArguments, MLEConfig), {"max_steps": "3", "bf16": "false", "learning_rate": 1,
                                                       "lr_scheduler_type": "cosine", "report_to": ["none"]})  # fmt: skip


def test_negative_learning_rate_and_seed_name_their_field(tmp_path):
    base = ["train", "mle", "--tiny_model", "true", "--dataset_name", COCO_TEST, "--output_dir", str(tmp_path / "o")]
    assert "`learning_rate` must be at least 0, got -1.0" in refused(base + ["--learning_rate", "-1"])
    assert "`seed` must be between 0 and 2**32 - 1, got -1" in refused(base + ["--seed", "-1"])
    # found by tests/test_fuzz_cli.py: a logging fraction that rounds to 0 steps ("integer modulo by zero")
    assert "`logging_steps` must be greater than 0, got -0.5" in refused(base + ["--logging_steps", "-0.5"])


def test_completion_budget_beyond_the_model_says_what_to_set(tiny_lm, tmp_path):
    rows = [{"prompt": "a dog", "completion": "runs"}] * 4
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    line = refused(["train", "mle", "--model_name_or_path", tiny_lm, "--dataset_name", data, "--output_dir",
                    str(tmp_path / "out"), "--max_completion_length", "100", "--report_to", "none"])  # fmt: skip
    # main: "set max_prompt_length to at most -36"
    assert "max_completion_length (100) leaves no room" in line and "set max_completion_length to at most 63" in line


# ----------------------------------------------------------------------------------------------- GENERE's generators
LOCAL_MODULE = '''
import pathlib
pathlib.Path("RAN").write_text("the module in the current folder ran")
def g(rng):
    return {"prompt": "add", "completion": "X"}
GENS = [g]
'''


def test_generators_are_never_imported_from_the_current_folder(tmp_path, monkeypatch):
    """`python -m hfcoop.cli` / `accelerate launch -m` put the current folder first on sys.path: a `tasks.py` lying
    there must not be imported (and run) by `generators: tasks:GENS`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "localgens.py").write_text(LOCAL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` does
    monkeypatch.setattr("sys.path", ["", *__import__("sys").path])  # and `python -c` / the REPL
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "add", "completion": "X"}] * 4)
    line = refused(["train", "genere", "--generators", "localgens:GENS", "--tiny_model", "true", "--dataset_name", data,
                    "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert "no installed module 'localgens'" in line and "./localgens.py:ATTRIBUTE" in line
    assert not (tmp_path / "RAN").exists()  # main: imported and ran it
    assert "localgens" not in __import__("sys").modules


def test_generators_from_an_explicit_file_or_an_installed_module(tmp_path, monkeypatch):
    from hfcoop.tasks import load_user_object
    from hfcoop.tasks.text_to_equation import EQUATION_GENERATORS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(LOCAL_MODULE)
    gens = load_user_object("./mine.py:GENS")
    assert gens[0](None) == {"prompt": "add", "completion": "X"} and (tmp_path / "RAN").exists()
    assert load_user_object("hfcoop.tasks.text_to_equation:EQUATION_GENERATORS") is EQUATION_GENERATORS
    with pytest.raises(ValueError, match="has no attribute 'NOPE'"):
        load_user_object(f"{tmp_path / 'mine.py'}:NOPE")
    with pytest.raises(ValueError, match="the file 'nope.py' does not exist"):
        load_user_object("nope.py:GENS")
    with pytest.raises(ValueError, match="must be `package.module:ATTRIBUTE`"):
        load_user_object("hfcoop.tasks.text_to_equation")


def test_generators_are_documented_as_running_code():
    import dataclasses

    from hfcoop.cli import ScriptArguments

    help_text = next(f.metadata["help"] for f in dataclasses.fields(ScriptArguments) if f.name == "generators")
    assert "Runs that code" in help_text and "never one in the current folder" in help_text
    readme = open(os.path.join(ROOT, "recipes", "genere", "README.md")).read()
    assert "**`generators:` runs code.**" in readme and "./my_generators.py:GENERATORS" in readme
