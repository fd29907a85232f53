"""Tiny GPT-2-style models with a tokenizer trained on the user's corpus, for smoke runs, tests and CPU demos.

The model is saved with ``save_pretrained`` and loaded back through ``from_pretrained``: exactly the path a Hub
model takes, so nothing downstream knows it is tiny.
"""

from __future__ import annotations

import os
from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

SPECIAL = "<|endoftext|>"
# Chat (ChatML-style) tokens and template of the tiny instruct model: the end-of-turn token is a second EOS id.
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_ROLES = ("system", "user", "assistant")


def train_word_tokenizer(
    texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 1, chat: bool = False
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace + punctuation split, lower-cased) trained on ``texts``.

    Word level keeps BLEU on whitespace tokens and the papers' word vocabularies (COCO: ~4.7k words) meaningful.
    ``chat``: also the chat tokens, the role names and a ChatML-style chat template (an instruct-style tokenizer).
    """
    if chat:
        texts = [*texts, " ".join(CHAT_ROLES)]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = [SPECIAL, "<unk>"] + ([TURN_START, TURN_END] if chat else [])
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special)
    tok.train_from_iterator(texts, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL, unk_token="<unk>",
        **({"additional_special_tokens": [TURN_START, TURN_END]} if chat else {}),
    )  # fmt: skip
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    output_dir: str,
    texts: Iterable[str],
    *,
    vocab_size: int = 5000,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
    dropout: float = 0.0,
    seed: int = 0,
    chat: bool = False,
) -> str:
    """Trains a tokenizer on ``texts``, builds a GPT-2 of the given size, saves both to ``output_dir``.

    ``chat``: an instruct-style model: the tokenizer has a chat template, and the generation config stops on two
    EOS ids, the template's end-of-turn token and EOS (``generation_config.eos_token_id`` a list, as Qwen/Llama).
    """
    import torch

    tokenizer = train_word_tokenizer(texts, vocab_size, chat=chat)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    os.makedirs(output_dir, exist_ok=True)
    if chat:
        model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(TURN_END), tokenizer.eos_token_id]
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
