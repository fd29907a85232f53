"""Property-based tests of the CLI's surface (issue 21, deliverable 7): recipe values, data rows, and the
generate / evaluate / sweep arguments. Every input either does its job (checked: the run trained with the values
given, the rows are all there and are strings, the metrics are finite) or exits 1 with one `hfcoop:` line that
names the field, row or file at fault. Never a traceback, never argparse's exit 2, never exit 0 with a wrong result.

The CLI runs in-process (`hfcoop.cli.main`); bad input is refused before any model is loaded, so most examples
cost milliseconds, and the valid ones train one step of a 1-layer model or draw a few tokens. `derandomize=True`:
the same examples on every run (CI stays deterministic); `database=None`: nothing written into the checkout.
`HFCOOP_FUZZ_SCALE=N` explores N times as many random examples (a local bug hunt; 5-8 found nothing more).
"""

import json
import math
import os
import re
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from hfcoop.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_TEST = os.path.join(ROOT, "recipes", "data", "coco_test_sample.txt")
POSITIONS = 64  # the tiny_lm fixture's


def fuzz(max_examples: int):
    """CI's bounded, fixed examples; `HFCOOP_FUZZ_SCALE=20` explores 20x as many random ones (a local hunt)."""
    scale = int(os.environ.get("HFCOOP_FUZZ_SCALE", "0"))
    return settings(max_examples=max_examples * max(scale, 1), deadline=None, derandomize=not scale, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, the `hfcoop:` line) of `hfcoop <argv>`; asserts a refusal is exit 1 with one such line."""
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
        assert isinstance(code, str), f"exit {code!r} (argparse?) for {argv}"
        line = code.splitlines()[0]
        assert line.startswith("hfcoop: ") and "Traceback" not in code, code
        assert sum(l.startswith("hfcoop:") for l in code.splitlines()) == 1, code
        event("refused")  # `pytest --hypothesis-show-statistics` shows how many examples ran through
        return 1, line
    event("ran")
    return 0, ""


def write_jsonl(path: str, rows: list) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return path


# Values of every YAML type, small where a large valid value would be slow (max_steps, epochs), with the
# out-of-range, non-finite, non-integer and wrong-type values users write.
JUNK = st.one_of(
    st.none(), st.booleans(), st.text(max_size=6), st.integers(-3, 6),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(-1, 2), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)  # fmt: skip
BIG = st.one_of(st.integers(-(10**12), 10**12), st.floats(-1e12, 1e12))  # out of range where big is cheap


def field(valid, bad=JUNK):
    """Half the draws in the field's valid range (so that runs train), half anything."""
    return st.one_of(valid, bad)


RECIPE_FIELDS = {
    "max_steps": field(st.integers(1, 2)),
    "learning_rate": field(st.floats(0, 0.1), st.one_of(JUNK, BIG)),
    "seed": field(st.integers(0, 2**32 - 1), st.one_of(JUNK, BIG)),
    "per_device_train_batch_size": field(st.integers(1, 16), st.one_of(JUNK, BIG)),
    "gradient_accumulation_steps": field(st.integers(1, 3), st.one_of(JUNK, st.integers(-1, 10**6))),
    "warmup_steps": field(st.one_of(st.integers(0, 5), st.floats(0, 0.9)), st.one_of(JUNK, BIG)),
    "weight_decay": field(st.floats(0, 1), st.one_of(JUNK, BIG)),
    "max_grad_norm": field(st.floats(0, 10), st.one_of(JUNK, BIG)),
    "lr_scheduler_type": field(st.sampled_from(["linear", "cosine", "constant", "polynomial"])),
    "logging_steps": field(st.integers(1, 5), st.one_of(JUNK, BIG)),
    "max_completion_length": field(st.integers(1, 63), st.one_of(JUNK, BIG)),
    "max_prompt_length": field(st.integers(1, 20), st.one_of(JUNK, BIG)),
    "max_train_samples": field(st.integers(1, 20), st.one_of(JUNK, BIG)),
    "temperature": field(st.floats(0.1, 2), st.one_of(JUNK, BIG)),
    "top_k": field(st.integers(0, 50), st.one_of(JUNK, BIG)),
    "top_p": field(st.floats(0.1, 1), st.one_of(JUNK, BIG)),
    "bf16": field(st.sampled_from([False, "false", "no"])),
    "quality_samples": field(st.integers(0, 4)),
}


def as_parsed(value):
    """What argparse makes of a YAML string default for a scalar field (`"3"` -> 3, `"true"` -> True)."""
    if isinstance(value, str):
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
        lowered = value.lower()
        if lowered in ("yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"):
            return lowered in ("yes", "true", "t", "y", "1")
    return value


@pytest.fixture(scope="module")
def pc_data(tmp_path_factory) -> str:
    rows = [{"prompt": f"a photo of {w}", "completion": f" a {w} on a table"} for w in ("cat", "dog", "cup", "man")]
    return write_jsonl(str(tmp_path_factory.mktemp("fuzz") / "pc.jsonl"), rows * 2)


@fuzz(20)
@given(st.dictionaries(st.sampled_from(sorted(RECIPE_FIELDS)), st.just(None), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: RECIPE_FIELDS[k] for k in keys})))  # fmt: skip
def test_recipe_values_train_or_name_their_field(tiny_lm, pc_data, values):
    recipe = {"model_name_or_path": tiny_lm, "dataset_name": pc_data, "max_steps": 1, "per_device_train_batch_size": 4,
              "max_completion_length": 6, "quality_samples": 0, "report_to": "none", "disable_tqdm": True,
              "save_strategy": "no", "logging_steps": 1, **values}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        recipe["output_dir"] = os.path.join(tmp, "out")
        path = os.path.join(tmp, "recipe.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(recipe, f, allow_unicode=True)
        code, line = run_cli(["train", "mle", "--config", path])
        if code:
            assert any(f"`{k}`" in line or k in line for k in values), (values, line)
            return
        # It trained, with exactly the values the recipe gave (not a truncated 2.5, not a default).
        assert os.path.isfile(os.path.join(recipe["output_dir"], "model.safetensors")), values
        saved = json.load(open(os.path.join(recipe["output_dir"], "hfcoop_training_args.json")))
        for key, value in values.items():
            if key in saved and isinstance(value, (int, float, str)) and not isinstance(saved[key], (list, dict)):
                given_value = as_parsed(value)
                if key == "max_prompt_length" and value is None:
                    continue  # None: the model's positions minus the completion budget, filled in by the trainer
                assert saved[key] == given_value, (key, value, saved[key])


# ----------------------------------------------------------------------------------------------- data rows
TEXTS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                 "content": st.one_of(TEXTS, st.integers(), st.none())})  # fmt: skip
CELL = st.one_of(TEXTS, TEXTS, st.integers(), st.none(), st.booleans(), st.lists(TEXTS, max_size=2),
                 st.lists(MESSAGE, max_size=3))  # fmt: skip
COLUMNS = st.sampled_from(["prompt", "completion", "text", "messages", "label"])


@st.composite
def data_rows(draw):
    """Rows that are mostly a valid prompt/completion or text file with a few cells changed, sometimes anything."""
    n = draw(st.integers(1, 6))
    if draw(st.booleans()):
        rows = [draw(st.dictionaries(COLUMNS, CELL, max_size=3)) for _ in range(n)]
    else:
        layout = draw(st.sampled_from([("prompt", "completion"), ("text",)]))
        rows = [{c: draw(TEXTS.filter(str.strip)) for c in layout} for _ in range(n)]
        for _ in range(draw(st.integers(0, 2))):
            row = draw(st.integers(0, n - 1))
            column = draw(st.one_of(st.sampled_from(layout), COLUMNS))
            if draw(st.integers(0, 3)):  # mostly a cell of another type (Arrow then reads the column as JSON)
                rows[row][column] = draw(st.one_of(st.integers(), st.none(), st.lists(TEXTS, max_size=2), CELL))
            else:
                rows[row].pop(column, None)
    return rows


def is_plain_string_data(rows: list) -> bool:
    """The oracle for exit 0 on non-chat data: one layout, every cell of it a string in every row."""
    for layout in (("prompt", "completion"), ("text",)):
        if all(isinstance(r.get(c), str) for r in rows for c in layout):
            return True
    return False


PC = {"prompt": "a photo of", "completion": " a cat"}


@fuzz(20)
@given(data_rows())
@example([PC, PC, {"prompt": "a photo of", "completion": 7}, PC])  # the case: no row named (Arrow's error)
@example([{"text": "a cat"}, {"text": ["a", "dog"]}, {"text": "a cup"}])
@example([PC, {"prompt": "a photo of"}, PC])  # a missing cell reads as null
def test_data_rows_train_or_name_the_row(tiny_lm, rows):
    with tempfile.TemporaryDirectory() as tmp:
        data = write_jsonl(os.path.join(tmp, "data.jsonl"), rows)
        out = os.path.join(tmp, "out")
        code, line = run_cli(["train", "mle", "--model_name_or_path", tiny_lm, "--dataset_name", data, "--output_dir",
                              out, "--max_steps", "1", "--per_device_train_batch_size", "4", "--max_completion_length",
                              "6", "--quality_samples", "0", "--report_to", "none", "--save_strategy", "no",
                              "--disable_tqdm", "true"])  # fmt: skip
        if code:
            # the row or file line at fault, the columns found, or what the whole file lacks
            named = re.search(r"\b(row|line) \d+|has columns \[|is empty|every '\w+' is empty|chat template", line)
            assert named or data in line, (rows, line)
            return
        assert is_plain_string_data(rows) or any("messages" in r or isinstance(r.get("prompt"), list) for r in rows), rows
        assert os.path.isfile(os.path.join(out, "model.safetensors"))


# ----------------------------------------------------------------------------------------------- generate
def small_int(low: int, high: int):
    return st.one_of(st.integers(low, high), st.sampled_from([-(2**40), 2**40]))


def flag_value(value) -> str:
    """A number as a user types it: fixed-point floats (argparse takes `-1e-05` for an option, not a value)."""
    return f"{value:.6f}" if isinstance(value, float) and math.isfinite(value) else str(value)


GENERATE_FLAGS = {
    "num_samples": st.integers(-3, 4),
    "batch_size": st.integers(-2, 5),
    "max_new_tokens": st.one_of(st.integers(-2, 4), st.integers(60, 70), st.just(10**6)),
    "max_prompt_length": st.one_of(st.integers(-2, 8), st.integers(60, 70)),
    "temperature": st.one_of(st.floats(-1, 3), st.sampled_from([0.0, 1e-3, math.inf, math.nan])),
    "top_k": st.integers(-3, 20),
    "top_p": st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, math.nan])),
    "seed": st.one_of(st.integers(-3, 3), st.just(2**33)),
}


@fuzz(25)
@given(
    flags=st.dictionaries(st.sampled_from(sorted(GENERATE_FLAGS)), st.just(None), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: GENERATE_FLAGS[k] for k in keys})),
    source=st.sampled_from(["unconditional", "prompts_file", "dataset"]),
    output=st.sampled_from(["none", "file", "folder", "missing_parent"]),
)  # fmt: skip
def test_generate_arguments_sample_or_name_their_flag(tiny_lm, pc_data, capsys, flags, source, output):
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["generate", "--model_name_or_path", tiny_lm, "--max_new_tokens", "3"]
        prompts = ["a photo of", "a man with"]
        if source == "prompts_file":
            with open(os.path.join(tmp, "prompts.txt"), "w") as f:
                f.write("\n".join(prompts) + "\n")
            argv += ["--prompts_file", os.path.join(tmp, "prompts.txt")]
        elif source == "dataset":
            argv += ["--dataset_name", pc_data]
        target = {"none": None, "file": os.path.join(tmp, "out.jsonl"), "folder": tmp,
                  "missing_parent": os.path.join(tmp, "no", "out.jsonl")}[output]  # fmt: skip
        if target:
            argv += ["--output_file", target]
        for key, value in flags.items():
            argv += [f"--{key}", flag_value(value)]
        capsys.readouterr()
        code, line = run_cli(argv)
        if code:
            assert any(k in line for k in flags) or (output in ("folder", "missing_parent") and "--output_file" in line), (flags, line)
            return
        assert output in ("none", "file"), "an unusable --output_file was accepted"
        rows = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
        per_prompt = flags.get("num_samples") or (1 if source == "dataset" else 10)
        expected = {"unconditional": 1, "prompts_file": len(prompts), "dataset": 8}[source] * per_prompt
        assert len(rows) == expected and all(isinstance(r["completion"], str) for r in rows), (flags, len(rows))
        if target:
            assert [json.loads(l) for l in open(target)] == rows


# ----------------------------------------------------------------------------------------------- evaluate
EVALUATE_FLAGS = {k: GENERATE_FLAGS[k] for k in ("num_samples", "batch_size", "max_new_tokens", "max_prompt_length",
                                                  "temperature", "seed")}  # fmt: skip
EVALUATE_FLAGS["max_eval_samples"] = st.integers(-2, 6)


@fuzz(15)
@given(
    flags=st.dictionaries(st.sampled_from(sorted(EVALUATE_FLAGS)), st.just(None), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: EVALUATE_FLAGS[k] for k in keys})),
    conditional=st.booleans(),
)  # fmt: skip
def test_evaluate_arguments_score_or_name_their_flag(tiny_lm, pc_data, flags, conditional):
    with tempfile.TemporaryDirectory() as tmp:
        metrics_file = os.path.join(tmp, "m.json")
        argv = ["evaluate", "--model_name_or_path", tiny_lm, "--dataset_name", pc_data if conditional else COCO_TEST,
                "--max_new_tokens", "3", "--num_samples", "3", "--max_eval_samples", "6", "--output_file", metrics_file]
        for key, value in flags.items():
            argv += [f"--{key}", flag_value(value)]
        code, line = run_cli(argv)
        if code:
            assert any(k in line for k in flags), (flags, line)
            return
        metrics = json.load(open(metrics_file))
        assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics


PREDICTION_CELL = st.one_of(TEXTS, st.integers(), st.none(), st.lists(TEXTS, max_size=1), st.booleans())


@st.composite
def prediction_rows(draw):
    """Mostly a valid file (string completions, references on every row or none) with a cell or two changed."""
    n = draw(st.integers(1, 5))
    if draw(st.booleans()):
        keys = st.sampled_from(["completion", "reference", "prompt"])
        return [draw(st.dictionaries(keys, PREDICTION_CELL, max_size=3)) for _ in range(n)]
    layout = draw(st.sampled_from([("completion",), ("completion", "reference")]))
    rows = [{k: draw(TEXTS) for k in layout} for _ in range(n)]
    for _ in range(draw(st.integers(0, 1))):
        row, key = draw(st.integers(0, n - 1)), draw(st.sampled_from(["completion", "reference"]))
        if draw(st.booleans()):
            rows[row][key] = draw(PREDICTION_CELL)
        else:
            rows[row].pop(key, None)
    return rows


@fuzz(40)
@given(prediction_rows())
def test_predictions_files_score_or_name_the_line(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(os.path.join(tmp, "p.jsonl"), rows)
        code, line = run_cli(["evaluate", "--predictions_file", path, "--dataset_name", COCO_TEST,
                              "--max_eval_samples", "20", "--output_file", os.path.join(tmp, "m.json")])  # fmt: skip
        if code:
            assert "line " in line or path in line, (rows, line)
            return
        # Scored: every row had a string completion, and references on every row or on none.
        assert all(isinstance(r.get("completion"), str) for r in rows), rows
        with_reference = [isinstance(r.get("reference"), str) for r in rows]
        assert all(with_reference) or not any("reference" in r for r in rows), rows
        metrics = json.load(open(os.path.join(tmp, "m.json")))
        assert all(math.isfinite(v) for v in metrics.values())


# ----------------------------------------------------------------------------------------------- sweep
@fuzz(8)
@given(
    temperatures=st.lists(field(st.floats(0.2, 2), st.one_of(st.floats(-1, 0.2), st.just(math.nan))), max_size=2),
    num_samples=field(st.integers(2, 3), st.integers(-1, 1)),
    dataset=st.sampled_from([True, True, False]),
    metric=st.sampled_from([None, "bleu-2", "rougeL", "bleu"]),
)  # fmt: skip
def test_sweep_arguments_draw_the_curve_or_name_their_flag(tiny_lm, temperatures, num_samples, dataset, metric):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sweep")
        argv = ["sweep", "--model_name_or_path", tiny_lm, "--num_samples", str(num_samples), "--max_new_tokens", "3",
                "--max_eval_samples", "8", "--output_dir", out]
        if temperatures:
            argv += ["--temperatures", *map(flag_value, temperatures)]
        if dataset:
            argv += ["--dataset_name", COCO_TEST]
        if metric:
            argv += ["--quality_metric", metric]
        code, line = run_cli(argv)
        if code:
            names = ("temperatures", "num_samples", "dataset_name", "quality_metric")
            assert any(n in line for n in names), line
            return
        lines = open(os.path.join(out, "sweep.csv")).read().strip().splitlines()
        assert len(lines) == 1 + len(temperatures or [0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.5])
        assert os.path.isfile(os.path.join(out, "sweep.png"))
