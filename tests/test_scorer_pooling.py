"""Scorers see the final EOS: real sequence classifiers pool the last *attended* token, even when pad == EOS."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from hfcoop.modeling import CooperativePair
from hfcoop.scorers import ScorerInputs, SequenceScorer, scorer_logits
from hfcoop.tiny import train_word_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_word_tokenizer(["a man riding a horse", "a dog on a bench"], vocab_size=20)
    assert tok.pad_token_id == tok.eos_token_id  # the case that used to blind the scorer
    return tok


def classifier(kind: str, tok) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), num_labels=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if kind == "gpt2":
        config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, **common)
        model = GPT2ForSequenceClassification(config)
    else:  # Llama-style (GenericForSequenceClassification pooling, rotary positions)
        config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=2, max_position_embeddings=32, **common)  # fmt: skip
        model = LlamaForSequenceClassification(config)
    return model.eval()


def batch(tok, completions: list[list[int]]):
    """One BOS prompt per row (left-padded) and right-padded completions, as the trainers pass them."""
    width = max(len(c) for c in completions)
    ids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in completions])
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
    prompts = torch.full((len(completions), 1), tok.bos_token_id)
    return prompts, torch.ones_like(prompts), ids, mask


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_finished_and_truncated_sequences_get_different_logits(kind, tokenizer):
    model = classifier(kind, tokenizer)
    words = tokenizer("a man riding", add_special_tokens=False)["input_ids"]
    finished, truncated = words + [tokenizer.eos_token_id], words
    inputs = ScorerInputs(tokenizer, tokenizer)(*batch(tokenizer, [finished, truncated, words[:1]]))
    with torch.no_grad():
        logits = scorer_logits(model, inputs)
        alone = [scorer_logits(model, ScorerInputs(tokenizer, tokenizer)(*batch(tokenizer, [c]))) for c in
                 (finished, truncated, words[:1])]  # fmt: skip
        # The pair forward (the trainers' path) pools the same way.
        pair_logits = CooperativePair(torch.nn.Identity(), model)(companion={"inputs": inputs})[1].squeeze(-1)
    assert abs(float(logits[0] - logits[1])) > 1e-4, "the final EOS must change the score"
    # Each row scores as it would alone: the pooled token is its last attended one, not a padding position.
    torch.testing.assert_close(logits, torch.cat(alone), atol=1e-5, rtol=0)
    torch.testing.assert_close(pair_logits, logits, atol=1e-6, rtol=0)
    # The reference: the classifier's own pooling on an unpadded single row ending in EOS, with a pad id no token
    # uses (what a tokenizer with a distinct pad token would give).
    model.config.pad_token_id = len(tokenizer) - 1
    try:
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([[tokenizer.bos_token_id, *finished]])).logits.squeeze()
    finally:
        model.config.pad_token_id = tokenizer.pad_token_id
    torch.testing.assert_close(logits[0], ref.float(), atol=1e-5, rtol=0)
    assert model.config.pad_token_id == tokenizer.pad_token_id  # the classifier's config is left as it was


def test_sequence_scorer_and_tiny_vocabularies(tokenizer):
    """When every id of the vocabulary ends some row, pooling still picks each row's last token."""
    model = classifier("gpt2", tokenizer)
    rows = [[i] for i in range(len(tokenizer))]  # every id is some row's last token
    scorer = SequenceScorer(model, ScorerInputs(tokenizer, tokenizer))
    logits = scorer(*batch(tokenizer, rows))
    alone = torch.cat([scorer(*batch(tokenizer, [r])) for r in rows])
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=0)


def test_training_with_a_user_classifier_with_its_own_tokenizer_and_lora(tiny_lm, coco_prompt_completion, tmp_path):
    """A user-supplied discriminator object with its own tokenizer, LoRA on both models (companion_peft): the
    texts are re-tokenised for it, its adapters and head learn, its frozen base does not, and it exports."""
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from conftest import coco_lines
    from hfcoop import GCNConfig, GCNTrainer
    from hfcoop.tiny import build_tiny_model

    other = build_tiny_model(str(tmp_path / "other"), coco_lines(200), vocab_size=250, n_layer=1, n_embd=16,
                             n_head=2, n_positions=64)  # fmt: skip
    discriminator = GPT2ForSequenceClassification.from_pretrained(other, num_labels=1)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    args = GCNConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                     learning_rate=1e-2, max_completion_length=6, num_candidates=2, companion_peft=True,
                     save_companion=True, scorer_tokenizer=other, report_to="none", save_strategy="no",
                     disable_tqdm=True)  # fmt: skip
    trainer = GCNTrainer(tiny_lm, discriminator=discriminator, train_dataset=coco_prompt_completion, args=args,
                         peft_config=peft_config)  # fmt: skip
    assert not trainer.scorer_inputs.same_tokenizer
    assert len(trainer.scorer_tokenizer) != len(AutoTokenizer.from_pretrained(tiny_lm))
    companion = trainer.pair.companion
    assert type(companion).__name__ == "PeftModelForSequenceClassification"
    before = {k: v.clone() for k, v in companion.state_dict().items()}
    trainer.train()
    after = companion.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("lora_" in k for k in changed) and any("score" in k for k in changed)
    assert not any("lora_" not in k and "score" not in k for k in changed)  # the frozen base stays frozen
    out = tmp_path / "export"
    trainer.save_model(str(out))
    assert (out / "discriminator" / "adapter_config.json").exists()
    assert (out / "discriminator" / "tokenizer.json").exists()
