"""`--loss-mask-type gemma4` on rendered conversations (slime_plugins/models/gemma4/chat.py).

The tokenizer is g4tok's (Gemma4's special tokens, our chat template written from the
published turn format). The expected mask is built here independently of the code under
test: the conversation is written out as pieces, each marked trained or not by the rule
(model turns after their role line, through `<turn|>`; thinking only if asked), and a token
is expected trained exactly when its characters lie in a trained piece.
"""

from __future__ import annotations

import pytest

import g4tok
import g4util  # noqa: F401  (the Gemma4 code on sys.path)

from slime_plugins.models.gemma4 import chat  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from slime.utils.tokenizer_compat import tokenizer_compat_kwargs

    path = g4tok.build(tmp_path_factory.mktemp("g4tok"))
    return AutoTokenizer.from_pretrained(str(path), **tokenizer_compat_kwargs(str(path), {}))


def pieces(messages, train_thinking=False):
    """The rendered conversation as (text, trained) pieces, written from the turn format."""
    out = [("<bos>", False)]
    for m in messages:
        role = "model" if m["role"] in ("assistant", "model") else m["role"]
        out.append((f"<|turn>{role}\n", False))
        model = role == "model" and m.get("step_loss_mask", 1) == 1
        if role == "model" and m.get("reasoning"):
            out.append((f"<|channel>thought\n{m['reasoning']}<channel|>", model and train_thinking))
        out.append((m["content"] + "<turn|>", model))
        out.append(("\n", False))
    return out


def expected(tok, parts):
    text = "".join(t for t, _ in parts)
    trained_chars = []
    for t, trained in parts:
        trained_chars += [trained] * len(t)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    for start, end in enc["offset_mapping"]:
        span = set(trained_chars[start:end])
        assert len(span) == 1, f"a token straddles a trained boundary at {start}:{end}"  # the test's own premise
        mask.append(int(span.pop()))
    return text, enc["input_ids"], mask


SYSTEM = {"role": "system", "content": "You are a careful assistant. Think step by step."}
Q1 = {"role": "user", "content": "What is 12 plus 30?"}
A1 = {"role": "assistant", "content": "The answer is 42."}
Q2 = {"role": "user", "content": "And 48 plus 24?"}
A2T = {"role": "assistant", "content": "So the answer is 72.", "reasoning": "First, 48 + 24 = 72."}
CALL = {"role": "assistant", "content": "<|tool_call>weather city Paris<tool_call|>"}
TOOL = {"role": "tool", "content": "sunny"}
A3 = {"role": "assistant", "content": "It is sunny in Paris."}

CONVERSATIONS = {
    "single turn": [Q1, A1],
    "system prompt": [SYSTEM, Q1, A1],
    "multi-turn": [SYSTEM, Q1, A1, Q2, A1],
    "thinking channel": [Q1, A2T],
    "multi-turn with thinking": [SYSTEM, Q1, A2T, Q2, A2T],
    "tool turns": [SYSTEM, Q1, CALL, TOOL, A3],
    "a turn left out by step_loss_mask": [Q1, dict(A1, step_loss_mask=0), Q2, A2T],
}


@pytest.mark.parametrize("train_thinking", [False, True], ids=["thinking masked", "thinking trained"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_trained_tokens_are_exactly_the_model_turns(tok, name, train_thinking):
    messages = CONVERSATIONS[name]
    text, ids, want = expected(tok, pieces(messages, train_thinking))
    assert tok.apply_chat_template(messages, tokenize=False) == text  # the template renders the format

    got_ids, got = chat.gemma4_loss_mask(tok, messages, train_thinking=train_thinking)
    assert got_ids == ids
    assert got == want
    assert sum(got) > 0 or all(m.get("step_loss_mask", 1) != 1 for m in messages if m["role"] == "assistant")
    # the same mask from the rendered text (--apply-chat-template) and from the token ids
    # (neither carries step_loss_mask)
    if all(m.get("step_loss_mask", 1) == 1 for m in messages):
        assert chat.gemma4_loss_mask(tok, text, train_thinking=train_thinking) == (ids, want)
        assert chat.gemma4_loss_mask(tok, ids, train_thinking=train_thinking) == (ids, want)


def test_what_is_trained_reads_back_as_the_answers(tok):
    messages = CONVERSATIONS["multi-turn with thinking"]
    ids, mask = chat.gemma4_loss_mask(tok, messages)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "So the answer is 72.<turn|>So the answer is 72.<turn|>"
    ids, mask = chat.gemma4_loss_mask(tok, messages, train_thinking=True)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert trained == ("<|channel>thought\nFirst, 48 + 24 = 72.<channel|>So the answer is 72.<turn|>") * 2


def test_a_truncated_last_turn_is_trained_to_the_end(tok):
    prompt = tok.apply_chat_template([SYSTEM, Q1], tokenize=False, add_generation_prompt=True)
    cut = prompt + "The answer"  # the response hit the length limit: no <turn|>
    text, ids, want = expected(tok, [(prompt, False), ("The answer", True)])
    assert text == cut
    assert chat.gemma4_loss_mask(tok, ids) == (ids, want)
    # cut inside the thinking channel: nothing of it is trained unless asked
    cut = prompt + "<|channel>thought\nFirst, 48"
    ids = tok(cut, add_special_tokens=False)["input_ids"]
    assert sum(chat.gemma4_loss_mask(tok, ids)[1]) == 0
    assert chat.gemma4_loss_mask(tok, ids, train_thinking=True)[1][-1] == 1


def test_the_special_tokens_are_single_ids(tok):
    for token in g4tok.SPECIAL + ["<bos>"]:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [token]


def test_malformed_sequences_are_refused(tok):
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    with pytest.raises(chat.Gemma4ChatError, match="closes no turn"):
        chat.gemma4_loss_mask(tok, ids("<bos>The answer<turn|>"))
    with pytest.raises(chat.Gemma4ChatError, match="not closed before the turn"):
        chat.gemma4_loss_mask(tok, ids("<bos><|turn>user\nWhat<|turn>model\n42<turn|>"))
    with pytest.raises(chat.Gemma4ChatError, match="no role line"):
        chat.gemma4_loss_mask(tok, ids("<bos><|turn><|channel>thought"))


def test_a_template_that_drops_turns_is_refused(tok):
    class Dropping:  # a chat template that leaves out history model turns
        def __getattr__(self, name):
            return getattr(tok, name)

        def apply_chat_template(self, messages, **kw):
            return tok.apply_chat_template([m for m in messages[:-2] if m["role"] != "assistant"] + messages[-2:], **kw)

    with pytest.raises(chat.Gemma4ChatError, match="2 model messages rendered as 1 model turns"):
        chat.gemma4_loss_mask(Dropping(), [Q1, A1, Q2, A1])


def test_a_tokenizer_without_gemma4_tokens_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    plain = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")
    with pytest.raises(chat.Gemma4ChatError, match="is --hf-checkpoint a Gemma4 checkpoint"):
        chat.gemma4_loss_mask(plain, [1, 1])
