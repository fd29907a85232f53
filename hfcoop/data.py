"""The two dataset formats (TRL's conventions), their tokenisation and collation.

- unconditional: a ``text`` column; generation starts from BOS, so the "prompt" of every row is ``[BOS]``.
- conditional: ``prompt`` and ``completion`` columns; losses, samples and metrics concern the completion only.
- conversational (TRL's formats): a ``messages`` column, or ``prompt`` / ``completion`` columns holding lists of
  ``{"role", "content"}`` messages. The tokenizer's chat template renders them (:func:`render_conversation`): the
  prompt with the generation prompt, the completion as what the assistant says, ending with the template's
  end-of-turn token. A ``messages`` row trains on its last assistant turn; the turns before it are the prompt.
  A ``tools`` column (function schemas, or their JSON string) goes to the template with each row, as in TRL.

Every tokenised row becomes ``prompt_input_ids`` + ``completion_input_ids`` (the completion ends with EOS
unless it was truncated), and a batch is left-padded prompts + right-padded completions: exactly the layout
that ``generate`` produces, so real and generated sequences go through the same forward code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from datasets import Dataset, IterableDataset

from .batching import pad_left, pad_right  # noqa: F401 (hfcoop.data.pad_left / pad_right: public names)

Format = Literal["text", "prompt_completion", "conversational"]


def is_conversational(row: dict[str, Any]) -> bool:
    """Whether a row holds chat messages (``messages``, or ``prompt``/``completion`` as lists of role dicts)."""
    for key in ("messages", "prompt", "completion"):
        value = row.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
            return True
    return False


def detect_format(column_names: list[str] | None, dataset_name: str = "dataset", first_row: dict | None = None) -> Format:
    """Which format a dataset is in (``first_row`` tells message lists from strings); a clear error otherwise."""
    columns = set(column_names or [])
    if "messages" in columns:
        return "conversational"
    if {"prompt", "completion"} <= columns:
        return "conversational" if first_row is not None and is_conversational(first_row) else "prompt_completion"
    if "text" in columns:
        return "text"
    raise ValueError(
        f"{dataset_name} has columns {sorted(columns)}, but hfcoop needs either a 'text' column (unconditional "
        "generation), 'prompt' and 'completion' columns (conditional generation), or conversational data (a "
        "'messages' column, or 'prompt'/'completion' as lists of messages). Rename your columns with "
        "`dataset.rename_column(...)` or use a task preset from `hfcoop.data`."
    )


def first_row(dataset: Dataset | IterableDataset) -> dict[str, Any] | None:
    if isinstance(dataset, Dataset):
        return dataset[0] if len(dataset) else None
    return next(iter(dataset), None)


def check_row(row: dict[str, Any], fmt: Format, where: str) -> None:
    """A row matches its format: strings for text / prompt-completion, message lists for conversational data."""
    if fmt != "conversational" and row_tools(row) is not None:
        raise ValueError(
            f"{where} has a 'tools' column, but its rows are plain strings: tools reach the model only through a chat "
            "template (as in TRL), which renders conversational rows ('messages', or 'prompt'/'completion' message "
            "lists). Convert the rows (`hfcoop.data.to_conversational`) or drop the column."
        )
    if fmt != "conversational":
        for column in ("text",) if fmt == "text" else ("prompt", "completion"):
            if not isinstance(row[column], str):
                raise ValueError(
                    f"{where} column '{column}' must hold strings, got {type(row[column]).__name__} (conversational "
                    "rows hold lists of {'role': ..., 'content': ...} messages in every conversational column)."
                )
        return
    for column in ("messages",) if "messages" in row else ("prompt", "completion"):
        messages = row[column]
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages)):
            raise ValueError(
                f"{where} column '{column}' must hold a non-empty list of {{'role': ..., 'content': ...}} messages, "
                f"got {messages!r:.80}."
            )
    if "messages" in row:
        roles = [m["role"] for m in row["messages"]]
        if roles[-1] != "assistant" or len(roles) < 2:
            raise ValueError(
                f"{where}: a 'messages' row must end with the assistant turn to learn, after at least one other "
                f"message (roles {roles}). Drop trailing turns, or give 'prompt'/'completion' message lists."
            )
    elif any(m["role"] != "assistant" for m in row["completion"]):
        raise ValueError(f"{where}: conversational 'completion' messages must be assistant turns.")


def validate_dataset(dataset: Dataset | IterableDataset | None, dataset_name: str) -> Format | None:
    """Checks a dataset before any compute: format, non-empty, string (or message-list) columns."""
    if dataset is None:
        return None
    first = first_row(dataset)
    fmt = detect_format(dataset.column_names, dataset_name, first)
    if first is None:
        raise ValueError(f"{dataset_name} is empty: give it at least one row.")
    check_row(first, fmt, f"{dataset_name} row 0")
    if isinstance(dataset, Dataset) and fmt != "conversational":
        check_text_columns(dataset, ("text",) if fmt == "text" else ("prompt", "completion"), dataset_name)
    elif isinstance(dataset, Dataset):
        check_message_columns(dataset, dataset_name)
    return fmt


def check_message_columns(dataset: Dataset, dataset_name: str) -> None:
    """Conversational columns are lists of message structs in every row (Arrow's type says so at no cost);
    otherwise (mixed JSON values) the rows are checked one by one and the first bad one is named."""
    import pyarrow as pa

    columns = ("messages",) if "messages" in dataset.column_names else ("prompt", "completion")
    types = [dataset.data.schema.field(c).type for c in columns]
    if all(pa.types.is_list(t) and pa.types.is_struct(t.value_type) for t in types):
        return
    for index, row in enumerate(dataset):
        check_row(row, "conversational", f"{dataset_name} row {index}")


def row_tools(row: dict[str, Any]) -> list[Any] | None:
    """A row's ``tools`` (function schemas) for the chat template, as TRL reads them: a list, or a JSON string of one
    (Arrow stores schemas of different shapes best as strings); None when absent or empty."""
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as err:
            raise ValueError(f"a 'tools' cell is not valid JSON ({err.msg}): {tools[:80]!r}") from None
    return tools or None  # `or None`: as TRL (Llama's template renders tool boilerplate for tools=[])


def check_chat_template(tokenizer: Any, rows: list[dict[str, Any]] = ()) -> None:
    """Conversational data needs the tokenizer's chat template; refuse early and name the fixes.

    ``rows``: sample rows (the first of each data set); when one has ``tools``, the template must render them. A
    template that ignores them (same prompt with and without) would train and score without the tools: refused.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The data is conversational (messages) but the tokenizer has no chat template. Use an instruct model's "
            "tokenizer, set one with `chat_template_path` (a .jinja file, or a tokenizer whose template to copy), "
            "or render the rows to plain 'prompt'/'completion' strings yourself."
        )
    for row in rows:
        tools = row_tools(row)
        if tools is None:
            continue
        messages, _ = conversation_parts(row)

        def prompt(tools: list[Any] | None) -> str:
            return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                 add_generation_prompt=messages[-1]["role"] != "assistant")  # fmt: skip

        if prompt(tools) == prompt(None):
            raise ValueError(
                "The data has a 'tools' column but the tokenizer's chat template ignores `tools` (the prompt renders "
                "the same with and without them), so the model would never see them. Use a template that renders "
                "tools (`chat_template_path`: a .jinja file, or a tool-calling model's tokenizer), or drop the column."
            )


def conversation_parts(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt messages, completion messages) of a conversational row: a ``messages`` row's last turn is the
    completion, the turns before it the prompt."""
    if "messages" in row:
        return row["messages"][:-1], row["messages"][-1:]
    return row["prompt"], row["completion"]


def apply_chat_template_path(tokenizer: Any, path: str | None) -> bool:
    """TRL's ``chat_template_path``: a ``.jinja`` / ``.j2`` file replaces the tokenizer's chat template here; a
    tokenizer (folder or Hub id) lends its template, its added tokens and EOS once the model is loaded (returns
    True: the caller then runs ``trl.clone_chat_template``, which also resizes the embeddings)."""
    if path is None:
        return False
    if not path.endswith((".jinja", ".j2")):
        if os.path.isfile(path):
            raise ValueError(f"chat_template_path '{path}' is a file but not a .jinja/.j2 template: name the template "
                             "file so, or give a tokenizer folder / Hub id whose template to copy.")  # fmt: skip
        return True
    if not os.path.isfile(path):
        raise ValueError(f"chat_template_path '{path}' does not exist (a .jinja/.j2 file, or a tokenizer folder).")
    with open(path, encoding="utf-8") as f:
        tokenizer.chat_template = f.read()
    return False


def render_conversation(row: dict[str, Any], tokenizer: Any, eos_token_ids: list[int] | None = None) -> dict[str, str]:
    """A conversational row as ``prompt`` / ``completion`` strings, rendered by the tokenizer's chat template.

    As TRL's ``apply_chat_template``: the prompt is rendered with the generation prompt (or continuing a final
    assistant message), the prompt + completion conversation without it, and the completion is what follows the
    two renderings' common prefix. For a ``messages`` row the prompt is every turn before the last (assistant) one.
    Then, as a sampled completion ends at its first end-of-turn / EOS token, the completion is cut after the first
    one of ``eos_token_ids`` (the tokenizer's EOS if None); if it holds none, the tokenizer's EOS is appended.
    Both strings carry the template's special tokens verbatim: tokenise them with ``add_special_tokens=False``.
    """
    check_chat_template(tokenizer)
    prompt_messages, completion_messages = conversation_parts(row)
    continue_final = prompt_messages[-1]["role"] == "assistant"
    template_kwargs = dict(row.get("chat_template_kwargs") or {}) | {"tools": row_tools(row)}  # TRL passes tools too
    prompt = tokenizer.apply_chat_template(
        prompt_messages, tokenize=False, add_generation_prompt=not continue_final,
        continue_final_message=continue_final, **template_kwargs,
    )  # fmt: skip
    full = tokenizer.apply_chat_template(prompt_messages + completion_messages, tokenize=False, **template_kwargs)
    common = 0
    for a, b in zip(prompt, full):  # some templates render the prompt alone differently (TRL's DeepSeek-R1 note)
        if a != b:
            break
        common += 1
    completion = full[common:]
    eos_tokens = tokenizer.convert_ids_to_tokens(eos_token_ids or [tokenizer.eos_token_id])
    ends = [completion.find(t) + len(t) for t in eos_tokens if t and t in completion]
    completion = completion[: min(ends)] if ends else completion + tokenizer.eos_token
    return {"prompt": prompt[:common], "completion": completion}


def render_conversational_dataset(dataset: Dataset, tokenizer: Any, eos_token_ids: list[int] | None = None) -> Dataset:
    """A conversational dataset as rendered ``prompt`` / ``completion`` strings (see :func:`render_conversation`);
    what evaluation samples from and scores, so that it sees exactly what training tokenises."""
    return dataset.map(
        render_conversation,
        fn_kwargs={"tokenizer": tokenizer, "eos_token_ids": eos_token_ids},
        remove_columns=dataset.column_names,
    )



def check_text_columns(dataset: Dataset, columns: tuple[str, ...], dataset_name: str) -> None:
    """Missing cells (empty CSV cells, JSON nulls) and a target column that is empty in every row are refused,
    with the row named. Arrow's null counts and string kernels keep this cheap on large datasets."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    for column in columns:
        values = table[column]
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type)):
            # Mixed JSON values (datasets' Json type) or numbers: the first row that is not a string is named.
            bad = next(((i, v) for i, v in enumerate(dataset[column]) if not isinstance(v, str) and v is not None), None)
            if bad is None:
                continue
            row, value = bad
            raise ValueError(
                f"{dataset_name} row {row} has a non-string '{column}' ({type(value).__name__}: {value!r:.60}): every "
                f"'{column}' must be a string. Fix that row (e.g. quote the number) or drop it."
            )
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise ValueError(
                f"{dataset_name} row {row} has no '{column}' (an empty CSV cell or a null): fill it or drop the row "
                f"({values.null_count} such row(s) in all), e.g. `dataset.filter(lambda r: r['{column}'] is not None)`."
            )
    target = columns[-1]  # 'text' or 'completion': what the generator learns to write
    if not pc.any(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table[target])), 0)).as_py():
        raise ValueError(
            f"{dataset_name}: every '{target}' is empty, so there is nothing to learn. Check the column mapping "
            "(task preset, column names) of your data."
        )


def start_token_id(tokenizer: Any) -> int:
    """The token an unconditional sample starts from: BOS, or EOS for tokenizers without BOS (GPT-2 has both)."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token: set `tokenizer.eos_token` first.")
    return token_id


def tokenize_row(
    row: dict[str, Any],
    tokenizer: Any,
    fmt: Format,
    max_prompt_length: int | None,
    max_completion_length: int,
    eos_token_ids: list[int] | None = None,
) -> dict[str, list[int]]:
    """One row -> ``prompt_input_ids`` / ``completion_input_ids``.

    Completions get EOS appended *before* truncation to ``max_completion_length`` (the budget the generator
    samples with), so a truncated completion ends without EOS exactly like a truncated sample does.
    Conversational rows are rendered by the chat template first (:func:`render_conversation`): their completion
    already ends with its end-of-turn token (one of ``eos_token_ids``), and the template's special tokens are
    not added twice. Prompts keep their last ``max_prompt_length`` tokens, the part nearest the completion.
    """
    completion_ids: list[int]
    if fmt == "text":
        prompt_ids = [start_token_id(tokenizer)]
        completion_ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    else:
        chat = fmt == "conversational"
        texts = render_conversation(row, tokenizer, eos_token_ids) if chat else row
        prompt_ids = tokenizer(texts["prompt"], add_special_tokens=not chat)["input_ids"]
        if max_prompt_length is not None:
            prompt_ids = prompt_ids[-max_prompt_length:]
        if not prompt_ids:
            prompt_ids = [start_token_id(tokenizer)]
        completion_ids = tokenizer(texts["completion"], add_special_tokens=False)["input_ids"]
        if not chat or not completion_ids or completion_ids[-1] not in (eos_token_ids or [tokenizer.eos_token_id]):
            completion_ids = completion_ids + [tokenizer.eos_token_id]
    return {"prompt_input_ids": prompt_ids, "completion_input_ids": completion_ids[:max_completion_length]}


def tokenize_dataset(
    dataset: Dataset | IterableDataset,
    tokenizer: Any,
    fmt: Format,
    max_prompt_length: int | None,
    max_completion_length: int,
    num_proc: int | None = None,
    eos_token_ids: list[int] | None = None,
) -> Dataset | IterableDataset:
    """Tokenises a dataset in any format, keeping only the tokenised columns."""
    kwargs = {"num_proc": num_proc, "desc": "Tokenizing"} if isinstance(dataset, Dataset) else {}
    return dataset.map(
        tokenize_row,
        fn_kwargs=dict(
            tokenizer=tokenizer,
            fmt=fmt,
            max_prompt_length=max_prompt_length,
            max_completion_length=max_completion_length,
            eos_token_ids=eos_token_ids,
        ),
        remove_columns=dataset.column_names,
        **kwargs,
    )


@dataclass
class PromptCompletionCollator:
    """Left-pads prompts and right-pads completions (the layout ``generate`` returns)."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompt_ids, prompt_mask = pad_left([r["prompt_input_ids"] for r in rows], self.pad_token_id)
        completion_ids, completion_mask = pad_right([r["completion_input_ids"] for r in rows], self.pad_token_id)
        return {
            "prompt_input_ids": prompt_ids,
            "prompt_attention_mask": prompt_mask,
            "completion_input_ids": completion_ids,
            "completion_mask": completion_mask,
        }


_LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_any_dataset(name_or_path: str, config_name: str | None = None, split: str = "train") -> Dataset:
    """A split of a Hub dataset, a local dataset folder, or a local txt/json/jsonl/csv/parquet file.

    Local text files give one row per line in a ``text`` column (empty lines dropped).
    """
    import os

    from datasets import load_dataset, load_from_disk

    if os.path.isfile(name_or_path):
        ext = os.path.splitext(name_or_path)[1].lower()
        if ext not in _LOCAL_BUILDERS:
            raise ValueError(f"Unsupported data file {name_or_path}: use one of {sorted(_LOCAL_BUILDERS)}.")
        check_data_file(name_or_path, ext)
        kwargs = {"field": "data"} if ext == ".json" and _has_data_field(name_or_path) else {}
        try:
            dataset = load_dataset(_LOCAL_BUILDERS[ext], data_files={"data": name_or_path}, split="data", **kwargs)
        except Exception as err:  # noqa: BLE001 - datasets' errors name neither the file nor what to do
            cause = " ".join(str(err.__cause__ or err).split())[:300]
            raise ValueError(f"could not read the data file {name_or_path} as {ext[1:]}: {cause}") from err
        if ext == ".txt":
            dataset = dataset.filter(lambda row: bool(row["text"].strip()))
        return dataset
    if os.path.isdir(name_or_path) and os.path.isfile(os.path.join(name_or_path, "dataset_info.json")):
        return load_from_disk(name_or_path)
    if os.path.isdir(name_or_path) and os.path.isfile(os.path.join(name_or_path, "dataset_dict.json")):
        return load_from_disk(name_or_path)[split]
    if looks_like_local_path(name_or_path):  # not a Hub id: say the file is missing, not "Couldn't reach the Hub"
        raise ValueError(f"the data file or folder '{name_or_path}' does not exist (relative paths start from "
                         f"{os.getcwd()}). Check the path, or give a Hub dataset id such as stanfordnlp/imdb.")  # fmt: skip
    return load_dataset(name_or_path, config_name, split=split)


def looks_like_local_path(name: str) -> bool:
    """A name no Hub dataset id can be (ids are ``name`` or ``owner/name``): a data file's extension, a leading
    ``.``, ``/`` or ``~``, a trailing ``/``, or more than one ``/``."""
    import os

    ext = os.path.splitext(name)[1].lower()
    return ext in _LOCAL_BUILDERS or name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def check_data_file(path: str, ext: str) -> None:
    """Reads a local data file once and names the file and line of what would break loading: no content, bytes
    that are not UTF-8, a JSON Lines row that is not one JSON object."""
    import json

    if ext == ".parquet":
        return
    records, first_bad = 0, None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}, line {number}: bytes that are not UTF-8 ({raw[max(err.start - 10, 0) : err.end + 10]!r}). "
                    "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
                ) from None
            if not line.strip():
                continue
            records += 1
            if ext == ".jsonl" and first_bad is None:
                try:
                    if not isinstance(json.loads(line), dict):
                        first_bad = (number, "it is not a JSON object")
                except json.JSONDecodeError as err:
                    first_bad = (number, err.msg)
    if records == 0:
        raise ValueError(f"the data file {path} is empty (no non-blank line): give it at least one row.")
    if first_bad is not None:
        raise ValueError(
            f"{path}, line {first_bad[0]}: not a JSON object ({first_bad[1]}). Each line of a .jsonl file must be "
            "one JSON object such as {\"prompt\": \"...\", \"completion\": \"...\"}."
        )
    if ext == ".json":
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data": JSON Lines in a .json file, which datasets reads too
                raise ValueError(f"{path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg}).") from None
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as line_err:
                        raise ValueError(f"{path}, line {number}: not valid JSON ({line_err.msg}).") from None


def _has_data_field(path: str) -> bool:
    """SQuAD-style JSON files keep their records under a top-level "data" list."""
    with open(path) as f:
        head = f.read(4096).lstrip()
    return head.startswith("{") and '"data"' in head and "\n{" not in head


# ----------------------------------------------------------------------------- task presets
# Each preset maps a well-known column layout to the two formats. Templates follow common practice for
# decoder-only models (a "TL;DR:" cue for summarisation, labelled fields for question generation).
SUMMARIZATION_TEMPLATE = "{document}\nTL;DR:"
QUESTION_GENERATION_TEMPLATE = "context: {context}\nanswer: {answer}\nquestion:"


def _first(value: Any) -> str:
    return value[0] if isinstance(value, (list, tuple)) else value


def _join(value: Any) -> str:
    return " ".join(value) if isinstance(value, (list, tuple)) else value


def _summarization(document: str, summary: str) -> Callable[[dict[str, Any]], dict[str, str]]:
    def convert(row: dict[str, Any]) -> dict[str, str]:
        return {"prompt": SUMMARIZATION_TEMPLATE.format(document=_join(row[document]).strip()),
                "completion": " " + _first(row[summary]).strip()}  # fmt: skip

    return convert


def _question_generation(answer_of: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], dict[str, str]]:
    def convert(row: dict[str, Any]) -> dict[str, str]:
        prompt = QUESTION_GENERATION_TEMPLATE.format(context=row["context"].strip(), answer=answer_of(row).strip())
        return {"prompt": prompt, "completion": " " + row["question"].strip()}

    return convert


# name: (columns that identify the layout, converter, row filter)
TASK_PRESETS: dict[str, tuple[set[str], Callable[[dict[str, Any]], dict[str, str]], Callable[[dict], bool] | None]] = {
    "cnn_dailymail": ({"article", "highlights"}, _summarization("article", "highlights"), None),
    "xsum": ({"document", "summary"}, _summarization("document", "summary"), None),
    "scitldr": ({"source", "target"}, _summarization("source", "target"), None),
    "squad": ({"context", "question", "answers"}, _question_generation(lambda r: r["answers"]["text"][0]),
              lambda r: len(r["answers"]["text"]) > 0),  # unanswerable SQuAD v2 rows have no answer to ask about
    "squad_qg": ({"context", "answer", "question"}, _question_generation(lambda r: r["answer"]), None),
}  # fmt: skip
TASK_ALIASES = {"summarization": ("cnn_dailymail", "xsum", "scitldr"), "question_generation": ("squad", "squad_qg")}


def to_conversational(dataset: Dataset, system_prompt: str | None = None) -> Dataset:
    """``prompt`` / ``completion`` strings as TRL's conversational prompt-completion rows: the prompt a user turn
    (after an optional system turn), the completion the assistant's turn (its leading space dropped)."""

    def convert(row: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return {"prompt": system + [{"role": "user", "content": row["prompt"]}],
                "completion": [{"role": "assistant", "content": row["completion"].strip()}]}  # fmt: skip

    return dataset.map(convert, remove_columns=dataset.column_names)


def apply_task(dataset: Dataset, task: str = "auto") -> Dataset:
    """Maps a dataset to ``text`` or ``prompt``/``completion`` with a task preset.

    ``task``: ``"auto"`` (datasets already in a format pass through; known layouts are recognised by their
    columns), ``"text"``, ``"summarization"``, ``"question_generation"`` or a preset name from ``TASK_PRESETS``.
    """
    columns = set(dataset.column_names)
    if task in ("auto", "text") and ("text" in columns or "messages" in columns or {"prompt", "completion"} <= columns):
        return dataset
    candidates = TASK_ALIASES.get(task, (task,)) if task != "auto" else tuple(TASK_PRESETS)
    for name in candidates:
        if name not in TASK_PRESETS:
            raise ValueError(f"Unknown task '{task}'. Choose auto, text, {', '.join(TASK_ALIASES)} or {', '.join(TASK_PRESETS)}.")
        needed, convert, keep = TASK_PRESETS[name]
        if needed <= columns:
            if keep is not None:
                dataset = dataset.filter(keep)
            return dataset.map(convert, remove_columns=dataset.column_names)
    raise ValueError(
        f"Task '{task}': the dataset has columns {sorted(columns)}, which match no preset "
        f"({'; '.join(f'{n}: {sorted(TASK_PRESETS[n][0])}' for n in candidates if n in TASK_PRESETS)}). "
        "Rename the columns, or map them to 'text' / 'prompt'+'completion' yourself."
    )
