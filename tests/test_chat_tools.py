"""Chat data like TRL: a `tools` column reaches the chat template (or is refused with the reason), TRL's
`chat_template_path` replaces the template, and `use_liger_kernel` is refused rather than ignored."""

import json

import pytest
import torch
from datasets import Dataset
from trl.data_utils import apply_chat_template as trl_apply_chat_template

from hfcoop import CoTConfig, MLEConfig, MLETrainer
from hfcoop.data import render_conversation, tokenize_row, validate_dataset
from hfcoop.modeling import load_tokenizer
from hfcoop.tiny import CHAT_TEMPLATE, TURN_END, build_tiny_model

from conftest import coco_lines

TOOL = {"type": "function", "function": {"name": "count_objects", "description": "count objects in the image",
                                         "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
# CHAT_TEMPLATE (the tiny instruct model's, which ignores tools) with a system turn listing the tools first.
TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\ntools: ' }}{% for tool in tools %}{{ tool['function']['name'] + ' : ' + "
    "tool['function']['description'] + ' ' }}{% endfor %}{{ '<|im_end|>\n' }}{% endif %}" + CHAT_TEMPLATE
)
SMALL = dict(max_steps=1, per_device_train_batch_size=4, max_completion_length=8, use_cpu=True, report_to=[],
             save_strategy="no", disable_tqdm=True)  # fmt: skip


def chat_rows(n: int, tools) -> list[dict]:
    rows = []
    for line in coco_lines(n):
        words = line.split()
        rows.append({"prompt": [{"role": "user", "content": " ".join(words[:3])}],
                     "completion": [{"role": "assistant", "content": " ".join(words[3:])}], "tools": tools})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory) -> str:
    """An instruct-style tiny model whose template ignores tools; its vocabulary knows the tool's words."""
    path = str(tmp_path_factory.mktemp("chat_lm"))
    texts = coco_lines(200) + ["tools count_objects : count objects in the image"]
    return build_tiny_model(path, texts, vocab_size=800, n_layer=1, n_embd=32, n_head=2, n_positions=96, chat=True)


@pytest.fixture()
def tools_tok(chat_lm):
    tok = load_tokenizer(None, chat_lm)
    tok.chat_template = TOOLS_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def template_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "tools.jinja"
    path.write_text(TOOLS_TEMPLATE)
    return str(path)


@pytest.mark.parametrize("as_json", [False, True], ids=["list", "json_string"])
def test_tools_reach_the_chat_template_as_in_trl(tools_tok, as_json):
    (row,) = chat_rows(1, json.dumps([TOOL]) if as_json else [TOOL])
    eos = [tools_tok.convert_tokens_to_ids(TURN_END), tools_tok.eos_token_id]
    rendered = render_conversation(row, tools_tok, eos)
    trl = trl_apply_chat_template({k: row[k] for k in ("prompt", "completion")}, tools_tok, tools=[TOOL])
    assert rendered["prompt"] == trl["prompt"]
    assert rendered["prompt"].startswith("<|im_start|>system\ntools: count_objects : count objects in the image")
    # hfcoop's completion ends at the end-of-turn token, where a sample stops (TRL's keeps the template's "\n").
    assert rendered["completion"].endswith(TURN_END) and trl["completion"] == rendered["completion"] + "\n"
    without = render_conversation({k: row[k] for k in ("prompt", "completion")}, tools_tok, eos)
    assert "count_objects" not in without["prompt"]


def test_a_template_that_ignores_tools_is_refused(chat_lm):
    data = Dataset.from_list(chat_rows(8, json.dumps([TOOL])))
    with pytest.raises(ValueError, match="chat template ignores `tools`"):
        MLETrainer(chat_lm, args=MLEConfig(output_dir="unused", **SMALL), train_dataset=data)


def test_tools_on_string_rows_are_refused():
    data = Dataset.from_dict({"prompt": ["a"], "completion": ["b"], "tools": [json.dumps([TOOL])]})
    with pytest.raises(ValueError, match="'tools' column, but its rows are plain strings"):
        validate_dataset(data, "train_dataset")


def test_chat_template_path_file_trains_with_tools(chat_lm, template_file, tools_tok, tmp_path):
    data = Dataset.from_list(chat_rows(8, json.dumps([TOOL])))
    args = MLEConfig(output_dir=str(tmp_path / "out"), chat_template_path=template_file, **SMALL)
    trainer = MLETrainer(chat_lm, args=args, train_dataset=data)
    assert trainer.processing_class.chat_template == TOOLS_TEMPLATE
    # What trains is the rendering with the tools: the tokenised prompt holds the tools' system turn.
    expected = tokenize_row(data[0], tools_tok, "conversational", None, 8, trainer.eos_token_ids)
    assert trainer.train_dataset[0]["prompt_input_ids"] == expected["prompt_input_ids"]
    assert "count_objects" in trainer.processing_class.decode(trainer.train_dataset[0]["prompt_input_ids"])
    trainer.train()
    trainer.save_model()
    assert load_tokenizer(None, str(tmp_path / "out")).chat_template == TOOLS_TEMPLATE  # exported with the model


def test_chat_template_path_tokenizer_clones_its_template(tiny_lm, chat_lm, tmp_path):
    data = Dataset.from_list(chat_rows(8, None))
    with pytest.raises(ValueError, match="no chat template"):  # tiny_lm's tokenizer has none
        MLETrainer(tiny_lm, args=MLEConfig(output_dir=str(tmp_path / "a"), **SMALL), train_dataset=data)
    args = MLEConfig(output_dir=str(tmp_path / "b"), chat_template_path=chat_lm, **SMALL | {"max_completion_length": 32})
    trainer = MLETrainer(tiny_lm, args=args, train_dataset=data)
    tok = trainer.processing_class
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.convert_tokens_to_ids(TURN_END) != tok.unk_token_id  # the template's tokens were added
    rows = trainer.pair.generator.get_input_embeddings().weight.shape[0]
    assert rows == len(tok) and rows % 64 == 0  # embeddings resized as trl.clone_chat_template does
    # The source's EOS (TRL clones the tokenizer's, not the generation config's extra ids): completions end there,
    # after the template's end-of-turn token.
    completion = trainer.train_dataset[0]["completion_input_ids"]
    assert trainer.eos_token_ids == [tok.eos_token_id] and completion[-1] == tok.eos_token_id
    assert tok.convert_tokens_to_ids(TURN_END) in completion
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_missing_chat_template_file_is_refused(chat_lm, tmp_path):
    data = Dataset.from_list(chat_rows(4, None))
    args = MLEConfig(output_dir=str(tmp_path / "out"), chat_template_path=str(tmp_path / "nope.jinja"), **SMALL)
    with pytest.raises(ValueError, match="chat_template_path .* does not exist"):
        MLETrainer(chat_lm, args=args, train_dataset=data)


@pytest.mark.parametrize("config_cls", [MLEConfig, CoTConfig])
def test_use_liger_kernel_is_refused_with_the_reason(config_cls):
    with pytest.raises(ValueError, match="use_liger_kernel is not supported by hfcoop: Liger's kernels patch a single"):
        config_cls(output_dir="unused", use_liger_kernel=True, use_cpu=True, report_to=[])


def test_a_chat_template_path_that_is_no_template_file_is_refused(chat_lm, tmp_path):
    other = tmp_path / "template.txt"
    other.write_text(TOOLS_TEMPLATE)
    args = MLEConfig(output_dir=str(tmp_path / "out"), chat_template_path=str(other), **SMALL)
    with pytest.raises(ValueError, match="is a file but not a .jinja/.j2 template"):
        MLETrainer(chat_lm, args=args, train_dataset=Dataset.from_list(chat_rows(4, None)))
