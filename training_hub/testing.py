"""Local builders for tests and GPU proofs: a tiny causal LM with its own tokenizer, and datasets.

Nothing here touches the network. Everything is deterministic for a given seed, and sizes are
parameters, so CPU tests build a ~100k-parameter model and a GPU proof can build a few-million-
parameter one with the same code:

    from training_hub.testing import build_tiny_model, write_chat_dataset, write_pretraining_dataset
    model = build_tiny_model(tmp / "model", hidden_size=256, num_layers=4)   # model.path, model.num_parameters
    write_chat_dataset(tmp / "chat.jsonl", n_samples=256, seed=0)
    write_pretraining_dataset(tmp / "docs.jsonl", n_docs=64)

The tokenizer is what instructlab-training's data processing (0.16.x, the unmask-token path) needs:
byte-level BPE so `decode(encode(text)) == text`, BOS/EOS/PAD special tokens, a post-processor that
prepends BOS (pretraining data processing calls `encode(add_special_tokens=True)` and expects
`[BOS] ... [EOS]`), and a chat template that renders each message's content verbatim between
role-marker tokens, with EOS right after assistant content (instructlab unmasks assistant content
through the following EOS). The heavy imports (torch, transformers, tokenizers) happen inside the
functions, so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}

# Renders content verbatim; EOS only after assistant turns, so instructlab's labels cover
# "assistant content + EOS" and nothing else.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{{ '\n' + message['content'] }}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{{ '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

# A small fixed vocabulary: text drawn from it is tokenizer-friendly and reproducible.
_WORDS = (
    "the a an of to in on for with from by at about into over after before under between "
    "model data training token batch epoch step loss gradient learning rate optimizer weight "
    "layer attention head vector matrix tensor sequence length sample dataset checkpoint node "
    "cluster gpu memory process rank network queue job pod service volume schedule resume "
    "small large fast slow early late new old good clear simple careful stable random exact "
    "is are was were be been has have had do does did can will should may must not "
    "read write run stop start wait check save load send build test measure compare explain "
    "answer question reason result value number list table file path line word text letter "
    "red blue green yellow river mountain city forest ocean garden window kitchen library "
    "one two three four five six seven eight nine ten hundred thousand first second last"
).split()

_QUESTION_OPENERS = ("What is", "How do you", "Why does", "Can you explain", "When should we", "Where is")


@dataclass(frozen=True)
class TinyModel:
    """Where a tiny model was saved and how big it is. Usable as a path (`os.fspath(model)`)."""

    path: Path
    num_parameters: int
    vocab_size: int
    model_type: str

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _sentence(rng: random.Random, min_words: int, max_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))]
    return " ".join(words).capitalize() + rng.choice((".", ".", "!", "?"))


def _paragraph(rng: random.Random, min_words: int, max_words: int) -> str:
    target = rng.randint(min_words, max_words)
    sentences, count = [], 0
    while count < target:
        sentence = _sentence(rng, 4, min(14, max(4, target - count)))
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


def _question(rng: random.Random) -> str:
    return f"{rng.choice(_QUESTION_OPENERS)} {_sentence(rng, 5, 14)[:-1].lower()}?"


def training_corpus(n_lines: int = 2000, seed: int = 1234) -> list[str]:
    """The built-in text the tokenizer is trained on (same word list as the datasets)."""
    rng = random.Random(seed)
    return [_paragraph(rng, 8, 40) if i % 3 else _question(rng) for i in range(n_lines)]


def build_tokenizer(vocab_size: int = 1024, *, seed: int = 1234):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on the built-in corpus, with chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS.values()]
    if vocab_size < 256 + len(special) + 16:
        raise ValueError(f"vocab_size must be >= {256 + len(special) + 16} (byte alphabet + special tokens), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_corpus(seed=seed), trainer=trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    # encode(add_special_tokens=True) -> [BOS] text; instructlab's pretraining path appends EOS itself.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 20,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS.values())})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    path: str | os.PathLike[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    model_type: str = "llama",
    seed: int = 0,
) -> TinyModel:
    """Save a random-weight causal LM (`llama` or `qwen2` architecture) and its tokenizer under `path`.

    `vocab_size` bounds the tokenizer's BPE vocabulary (special tokens included; the small built-in
    corpus may yield fewer). The model's embedding matches the tokenizer exactly, so nothing gets
    resized at load time.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if model_type not in configs:
        raise ValueError(f"model_type must be one of {sorted(configs)}, got {model_type!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    config = configs[model_type](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return TinyModel(
        path=out,
        num_parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        model_type=model_type,
    )


def chat_samples(n_samples: int, seed: int = 0, *, max_turns: int = 2) -> list[dict]:
    """`n_samples` conversations (`{"messages": [...]}`), some with a system prompt, 1..max_turns turns."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n_samples):
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": "You are a " + _sentence(rng, 3, 8).lower()})
        for _turn in range(rng.randint(1, max_turns)):
            messages.append({"role": "user", "content": _question(rng)})
            messages.append({"role": "assistant", "content": _paragraph(rng, 12, 40)})
        samples.append({"messages": messages})
    return samples


def write_chat_dataset(path: str | os.PathLike[str], n_samples: int = 64, seed: int = 0, *, max_turns: int = 2) -> Path:
    """Write chat training data as JSONL, one `{"messages": [...]}` per line. Returns the path."""
    return _write_jsonl(path, chat_samples(n_samples, seed, max_turns=max_turns))


def write_pretraining_dataset(
    path: str | os.PathLike[str],
    n_docs: int = 32,
    *,
    column: str = "document",
    seed: int = 0,
    min_words: int = 40,
    max_words: int = 160,
) -> Path:
    """Write raw documents as JSONL, one `{column: text}` per line. Returns the path."""
    rng = random.Random(seed)
    return _write_jsonl(path, [{column: _paragraph(rng, min_words, max_words)} for _ in range(n_docs)])


def _write_jsonl(path: str | os.PathLike[str], rows: list[dict]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return out
