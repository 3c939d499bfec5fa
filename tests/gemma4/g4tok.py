"""A small Gemma4-style tokenizer written here, so no checkpoint is downloaded.

Gemma4's turn format, as published: `<bos>`, then turns `<|turn>ROLE\\n ... <turn|>\\n` with the
roles system, user, model and tool; a model turn may open with a thinking channel
`<|channel>thought\\n ... <channel|>`. The special tokens below are listed in
tokenizer_config.json's `extra_special_tokens` *as a list*, the way transformers 5 writes it
(and Gemma4's checkpoints ship it), which transformers 4.57.1 cannot read.

The vocabulary is a byte-level BPE trained on a few sentences, so that words split into
several tokens and a newline can merge with its neighbours; the chat template is ours, written
from the format above (the message key `reasoning` renders a thinking channel).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

TURN_OPEN, TURN_CLOSE = "<|turn>", "<turn|>"
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
SPECIAL = [TURN_OPEN, TURN_CLOSE, CHANNEL_OPEN, CHANNEL_CLOSE, "<|tool_call>", "<tool_call|>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% set role = 'model' if m['role'] in ('assistant', 'model') else m['role'] %}"
    "<|turn>{{ role }}\n"
    "{% if role == 'model' and m.get('reasoning') %}<|channel>thought\n{{ m['reasoning'] }}<channel|>{% endif %}"
    "{{ m['content'] }}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 plus 30? The answer is 42.",
    "You are a careful assistant. Think step by step.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "model user system tool thought weather city Paris sunny",
    "Let me think.\nFirst, 48 / 2 = 24.\nThen 48 + 24 = 72.\n\nSo the answer is 72.",
]


def build(path: Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json (list-valued extra_special_tokens) to path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>", *SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "extra_special_tokens": SPECIAL,
        "chat_template": CHAT_TEMPLATE,
    }, indent=1))
    return path


def digest(path: Path) -> dict:
    """sha256 of every file of a checkpoint folder: that loading it changed nothing."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def plain_transformers_refuses(path: Path) -> str:
    """transformers 4.57.1's own AutoTokenizer fails on the list (the reason for the fix): its message."""
    import transformers

    try:
        transformers.AutoTokenizer.from_pretrained(str(path))
    except AttributeError as e:
        assert "'list' object has no attribute 'keys'" in str(e), e
        return str(e)
    raise AssertionError("transformers 4.57.1 loaded the list form itself: the fix is not needed")
