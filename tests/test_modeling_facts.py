"""One definition per fact about a model: its position limit and its PEFT unwrap (hfcoop.modeling)."""

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hfcoop.modeling import max_positions, unwrap_peft


def _gpt2(n_positions: int) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=n_positions))


def _llama(max_position_embeddings: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=16, max_position_embeddings=max_position_embeddings,
    )  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("build,limit", [(_gpt2, 37), (_llama, 53)])
def test_max_positions_reads_each_family_name(build, limit):
    assert max_positions(build(limit)) == limit


def test_max_positions_and_unwrap_see_through_peft():
    from peft import LoraConfig, get_peft_model

    model = _gpt2(41)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn"]))
    assert unwrap_peft(wrapped) is model
    assert unwrap_peft(model) is model
    assert max_positions(wrapped) == 41


def test_max_positions_unknown_is_none():
    class NoConfig:
        pass

    assert max_positions(NoConfig()) is None  # type: ignore[arg-type]
