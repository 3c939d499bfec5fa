"""Run under transformers 4.57.1 (the image's version): slime loads a Gemma4 tokenizer, and
SGLang loads the same one the same way.

    python tok457_check.py FOLDER        (transformers 4.57.1 first on the path; SGLANG_TREE
                                          optional: the patched SGLang tree to compare with)

Writes g4tok's tokenizer (tokenizer_config.json with extra_special_tokens as a list) to FOLDER
and checks, one printed line each:
* plain transformers 4.57.1 fails on it (the reason for the fix);
* slime's path loads it (load_tokenizer where the slime tree is whole, else the rule it applies,
  slime/utils/tokenizer_compat.py, which is what load_tokenizer calls); the special tokens stay
  special and encode to single ids; the checkpoint's files are untouched;
* the gemma4 loss mask runs on it under 4.57.1;
* with SGLANG_TREE: SGLang's get_tokenizer gives the same special tokens and the same ids for a
  rendered conversation (both engines must agree, token for token).
Prints OK last.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import g4tok  # noqa: E402


def main(folder: str) -> int:
    import transformers

    assert transformers.__version__ == "4.57.1", transformers.__version__
    path = g4tok.build(Path(folder))
    before = g4tok.digest(path)
    print("plain transformers 4.57.1 fails:", g4tok.plain_transformers_refuses(path))

    import g4util  # noqa: F401  (the slime code on sys.path)

    try:
        from slime.utils.processing_utils import load_tokenizer
    except ImportError as e:  # materialised modules only: the rule load_tokenizer applies
        from slime.utils.tokenizer_compat import tokenizer_compat_kwargs

        print(f"slime.utils.processing_utils not importable here ({e}); checking tokenizer_compat_kwargs")

        def load_tokenizer(name, **kw):
            return transformers.AutoTokenizer.from_pretrained(name, **tokenizer_compat_kwargs(name, kw))
    else:
        print("slime.utils.processing_utils.load_tokenizer")
    tok = load_tokenizer(str(path), trust_remote_code=True)
    assert set(g4tok.SPECIAL) <= set(tok.all_special_tokens), tok.all_special_tokens
    for token in g4tok.SPECIAL:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == [token], (token, ids)
    assert g4tok.digest(path) == before, "the checkpoint's files changed"
    print("slime: special tokens kept special, one id each:", g4tok.SPECIAL)

    from slime_plugins.models.gemma4.chat import gemma4_loss_mask

    conversation = [{"role": "user", "content": "What is 12 plus 30?"},
                    {"role": "assistant", "content": "The answer is 42.", "reasoning": "12 + 30 = 42"}]
    ids, mask = gemma4_loss_mask(tok, conversation)
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "The answer is 42.<turn|>"
    print("gemma4 loss mask on 4.57.1:", sum(mask), "of", len(ids), "tokens trained")

    if os.environ.get("SGLANG_TREE"):
        sys.path.insert(0, str(HERE.parent / "sglang_gemma4"))
        import harness

        harness.setup_sglang()
        from sglang.srt.utils.hf_transformers_utils import get_tokenizer

        sgl = get_tokenizer(str(path))
        assert sorted(sgl.all_special_tokens) == sorted(tok.all_special_tokens), (sgl.all_special_tokens,
                                                                                  tok.all_special_tokens)
        text = tok.apply_chat_template(conversation, tokenize=False)
        assert sgl(text, add_special_tokens=False)["input_ids"] == ids
        assert sgl.convert_tokens_to_ids(g4tok.SPECIAL) == tok.convert_tokens_to_ids(g4tok.SPECIAL)
        print("SGLang get_tokenizer: the same special tokens and the same ids")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
