"""Run under transformers 4.57.1 (SGLang v0.5.9's pin): Gemma4's config and tokenizer load.

Called by test_transformers_457.py in a process whose path puts transformers 4.57.1 first.
Writes a tiny Gemma4 checkpoint folder (config.json as a Gemma4ForConditionalGeneration
checkpoint has it, and a tokenizer whose tokenizer_config.json holds extra_special_tokens
as a list, as Gemma4's does) and checks, printing one line per check:

* plain transformers 4.57.1 fails on that tokenizer_config.json (the reason for the fix);
* SGLang's get_tokenizer loads it, the listed tokens stay special, the files are untouched;
* SGLang's get_config and ModelConfig read the config: hybrid sliding-window layers,
  the global layers' shape as the main one, the sliding layers' as swa_*.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import harness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gemma4"))
from g4tok import digest, plain_transformers_refuses  # noqa: E402

SPECIAL = ["<|turn>", "<turn|>", "<|channel>", "<channel|>"]


def write_checkpoint(path: Path, config: dict) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<bos>", "<unk>", *SPECIAL, "user", "model", "hello", "world", "\n"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>", *SPECIAL])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "extra_special_tokens": SPECIAL,
        "model_max_length": 1024,
    }))
    (path / "config.json").write_text(json.dumps(config))


def main(folder: str, config_json: str) -> int:
    path = Path(folder)
    harness.setup_sglang()
    import transformers

    assert transformers.__version__ == "4.57.1", transformers.__version__
    print("transformers", transformers.__version__)
    write_checkpoint(path, json.loads(config_json))
    before = digest(path)
    print("plain transformers 4.57.1 fails:", plain_transformers_refuses(path))

    from sglang.srt.utils.hf_transformers_utils import get_config, get_tokenizer

    tok = get_tokenizer(str(path))
    ids = tok.encode("<|turn>user hello <turn|>", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["<|turn>", "user", "hello", "<turn|>"], tok.convert_ids_to_tokens(ids)
    assert set(SPECIAL) <= set(tok.all_special_tokens), tok.all_special_tokens
    assert tok.decode(ids, skip_special_tokens=True).split() == ["user", "hello"]
    assert digest(path) == before, "the checkpoint's files changed"
    print("get_tokenizer: special tokens kept special:", SPECIAL)

    config = get_config(str(path), trust_remote_code=False)
    text = config.text_config
    assert type(config).__name__ == "Gemma4Config", type(config)
    print("get_config:", type(config).__name__, "head_dim", text.head_dim, "swa_head_dim", text.swa_head_dim,
          "num_key_value_heads", text.num_key_value_heads, "swa_num_key_value_heads", text.swa_num_key_value_heads)

    from sglang.srt.configs.model_config import ModelConfig

    mc = ModelConfig(str(path))
    print("ModelConfig: hybrid swa", mc.is_hybrid_swa, "swa layers", mc.swa_attention_layer_ids,
          "full layers", mc.full_attention_layer_ids, "head_dim", mc.head_dim, "swa_head_dim", mc.swa_head_dim,
          "kv heads", mc.get_num_kv_heads(1), "swa kv heads", mc.get_swa_num_kv_heads(1))
    assert mc.is_hybrid_swa
    expect = json.loads(config_json)["text_config"]
    kinds = expect["layer_types"]
    assert mc.swa_attention_layer_ids == [i for i, k in enumerate(kinds) if k == "sliding_attention"]
    assert mc.full_attention_layer_ids == [i for i, k in enumerate(kinds) if k == "full_attention"]
    assert (mc.head_dim, mc.swa_head_dim, mc.swa_v_head_dim) == (
        expect["global_head_dim"], expect["head_dim"], expect["head_dim"])
    assert mc.get_swa_num_kv_heads(1) == expect["num_key_value_heads"]
    assert mc.get_num_kv_heads(1) == expect["num_global_key_value_heads"]
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
