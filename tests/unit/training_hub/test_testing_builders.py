"""training_hub.testing: the tiny model, its tokenizer and the datasets are what the other tests rely on."""

from __future__ import annotations

import json

import pytest

from training_hub.testing import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    ROLE_TOKENS,
    build_tiny_model,
    build_tokenizer,
    chat_samples,
    write_chat_dataset,
    write_pretraining_dataset,
)


def test_tiny_model_loads_and_runs(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    assert model.num_parameters() == tiny_model.num_parameters
    assert model.config.vocab_size == len(tokenizer) == tiny_model.vocab_size
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    ids = tokenizer("a small test", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert str(tiny_model) == str(tiny_model.path)


def test_tokenizer_special_tokens_and_round_trip(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    for token in [*ROLE_TOKENS.values(), EOS_TOKEN]:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    text = "Résumé: 3 GPUs, 1e-5 lr!\n\ttabs  and  spaces"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    # encode() with special tokens prepends BOS (instructlab's pretraining processing relies on it)
    assert tokenizer.encode("hello")[0] == tokenizer.bos_token_id


def test_chat_template_renders_content_verbatim(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        f"{BOS_TOKEN}<|system|>\nBe brief.\n<|user|>\nHi?\n<|assistant|>\nHello.{EOS_TOKEN}\n"
    )
    assert tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|assistant|>\n"
    )


@pytest.mark.timeout(300)
def test_sizes_are_parameters(tmp_path):
    bigger = build_tiny_model(tmp_path / "m", vocab_size=600, hidden_size=96, num_layers=3, num_heads=6,
                              num_kv_heads=2, model_type="qwen2", seed=1)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("qwen2", 96, 3)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (6, 2)
    assert bigger.vocab_size <= 600 and config["vocab_size"] == bigger.vocab_size
    with pytest.raises(ValueError, match="model_type must be one of"):
        build_tiny_model(tmp_path / "x", model_type="gpt9")
    with pytest.raises(ValueError, match=r"hidden_size \(65\) must be divisible by num_heads \(4\)"):
        build_tiny_model(tmp_path / "x", hidden_size=65)
    with pytest.raises(ValueError, match="vocab_size must be >= 278"):
        build_tokenizer(100)


def test_chat_dataset_deterministic_and_well_formed(tmp_path):
    first = write_chat_dataset(tmp_path / "a.jsonl", n_samples=30, seed=5)
    second = write_chat_dataset(tmp_path / "b.jsonl", n_samples=30, seed=5)
    assert first.read_text() == second.read_text()
    assert write_chat_dataset(tmp_path / "c.jsonl", n_samples=30, seed=6).read_text() != first.read_text()
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(rows) == 30
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}
        assert all(m["content"] for m in row["messages"])
    assert any(r["messages"][0]["role"] == "system" for r in rows)
    assert chat_samples(3, seed=5) == rows[:3]


def test_pretraining_dataset_column(tmp_path):
    path = write_pretraining_dataset(tmp_path / "d" / "docs.jsonl", n_docs=5, column="text", min_words=10, max_words=20)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5 and all(set(r) == {"text"} for r in rows)
    assert all(10 <= len(r["text"].split()) <= 40 for r in rows)
