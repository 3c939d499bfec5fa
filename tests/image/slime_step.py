"""The rl tier's slime step: slime's own `train.py`, started by the stack's Gemma4 run scripts
(`scripts/run-gemma4-31B.sh` for the dense checkpoint, `scripts/run-gemma4-26B-A4B.sh` for the MoE,
with `--use-rollout-routing-replay`), two rollouts on the tiny checkpoint, colocated on one GPU.

What it runs. The run script's launcher (`scripts/gemma4/launch.sh`) with `RAY_ADDRESS` unset starts
its own Ray head on 127.0.0.1 with a fresh token, submits `train.py` and stops that head by its PID
when the job ends. The run scripts carry the 31B's and 26B-A4B's model and parallelism flags; the
tier appends its own through `EXTRA_ARGS` (argparse: the last flag wins):

* the model flags derived from the tiny checkpoint's config.json (`model_flags`, the same mapping
  as slime_plugins/models/gemma4/provider.py's `megatron_args_for`), TP/PP/CP/EP 1, one SGLang
  engine of one GPU;
* `--use-kl-loss` with the scripts' `--kl-loss-coef 0`, so that slime computes the initial policy's
  log-probabilities on every rollout without changing the loss (the reference is the run scripts'
  `--ref-load`, the HF checkpoint, from which slime's raw mode also takes the first weights);
* the data: 8 prompts of 40 words and a label of 64 words each (`write_data`), 4 prompts x 8 samples
  a rollout, 40-token responses, one global batch (one optimizer step) a rollout, reward `--rm-type
  f1` (slime's word-overlap F1 of the response against the label: it varies between the samples
  of a random model, so GRPO's advantages are not all zero); `--lr 1e-2` (the step must move the
  policy well past the engines' bf16 disagreement); no eval before training. The rest runs as the
  run scripts have it: the Megatron checkpoint saved after the last rollout (under
  WORK/slime-KIND/save), the eval at the end of the data's epoch, GRPO with clipping.

The checkpoint gets a word-level tokenizer (`tokenizer_files`: one word per token id, a chat
template that passes the prompt through), because slime tokenizes prompts and SGLang detokenizes
responses. Before the run the same script runs with `DRY_RUN=1` and the `train.py` command it
prints is checked: every flag the tier sets must be the one in effect, and the script's own
`--ref-load` must be the checkpoint (`check_command`).

What proves the step, read from slime's log (its `logger.info` lines, forwarded by Ray):

* `rollout N: {...}` (data.py, the training actor) for rollouts 0 and 1: the per-sample mean of the
  log-probabilities the trained model gives the rollout's tokens (`rollout/log_probs`), the reference
  model's (`rollout/ref_log_probs`, the initial weights) and SGLang's own (`rollout/rollout_log_probs`);
* `step N: {...}` (model.py) for train steps 0 and 1, with `train/train_rollout_logprob_abs_diff`:
  mean |log p(train, before the step) - log p(SGLang)| over the rollout's response tokens;
* `perf N: {...}` (rollout.py, the rollout manager) for rollouts 0 and 1: SGLang generated them;
* `Memory-Usage after update_weights` (memory_utils.py, the training actor) between train step 0
  and rollout 1: the weight update into SGLang ran between the two rollouts.

The update arrived when (`decide`), with gap0 and gap1 the abs-diff of steps 0 and 1,
limit = 1.5 x gap0 + 0.01, and moved = rollout/log_probs - rollout/ref_log_probs at rollout 1:

    gap1 <= limit   and   moved >= 2 x limit   (and |log_probs - ref_log_probs| <= limit at rollout 0)

Why: rollout 1 was sampled by SGLang with whatever weights it holds; the trained model scores it
with the weights after step 0. If the update arrived, both hold the same weights and differ by
rounding only, as at rollout 0 (gap1 near gap0; 1.5 x plus 0.01 of room for a different set of
tokens). `moved` is the mean log-probability the step added to the tokens SGLang sampled: about
KL(new || initial) > 0 when SGLang samples from the new policy, about -KL(initial || new) < 0 when
it still samples from the initial one, so a positive margin of 2 x limit says both that the step
moved the policy and that the samples came from the moved one. Stale weights cannot pass both: if
moved >= 2 x limit all the same, gap1 >= |mean(new - SGLang)| >= moved - |mean(initial - SGLang)|
>= 2 x limit - gap0 > limit (SGLang's disagreement with the initial weights on rollout 1's tokens
taken to be about gap0). The check at rollout 0 makes sure the reference is the initial policy: the
same weights give the same log-probabilities (slime's CI holds the dense case to 1e-8); for the MoE
the reference routes by itself (slime runs it with routing replay off, "fallthrough") while the
trained model replays SGLang's routing, so the two may differ where the engines route differently,
hence the limit rather than zero.

The real run needs the real image on a GPU node (slime, Ray, SGLang with sgl-kernel, Megatron, TE);
it has not run in this project, which has no GPU node with the image. Outside it (tests/test_image_test_slime_step.py)
run: the flags against the configs, the tokenizer and data files, the dry run of the real run
scripts, and the log parsing and decision on log excerpts in slime's format.

What the run scripts would need to be driven without overrides: a way to replace the fixed model
flags of scripts/models/gemma4-*.sh (a MODEL_ARGS_FILE knob, or the flags derived from
HF_CHECKPOINT's config.json); today the tier overrides them.  (This tier's dry run found that the
scripts passed neither `--load` nor `--ref-load`, on which slime's raw mode hands Megatron no
checkpoint and setup_model_and_optimizer asserts; they now pass both.)
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("dense", "moe")
RUN_SCRIPTS = {"dense": "scripts/run-gemma4-31B.sh", "moe": "scripts/run-gemma4-26B-A4B.sh"}
N_PROMPTS, PROMPT_WORDS, LABEL_WORDS = 8, 40, 64
ROLLOUT_BATCH, N_SAMPLES, RESPONSE_LEN, NUM_ROLLOUT = 4, 8, 40, 2
LR = 1e-2
SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}  # ids as ckpt.config_json writes them
TIMEOUT_S = 1800
# `ray job submit` streams the job's log; Ray prefixes what its actors print with "(Class pid=N)"
# and may colour it
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LINE = re.compile(r"\]\s+(?P<file>[\w.-]+\.py):\d+ - (?P<msg>.*)$")
METRICS = re.compile(r"^(?P<tag>[\w-]+) (?P<id>\d+): (?P<body>\{.*\})")


class StepError(Exception):
    """Something the slime step cannot start with; the message says what and what to do."""


# ------------------------------------------------------------------ what the run gets


def word(i: int) -> str:
    """The tokenizer's word for token id i (ids past the special tokens)."""
    return f"t{i}"


def model_flags(conf: dict) -> list[str]:
    """Megatron flags for a Gemma4 config.json: what provider.megatron_args_for requires plus the
    vocabulary. Errors name the field that is missing."""
    need = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size"]
    if conf.get("enable_moe_block"):
        need += ["num_experts", "top_k_experts", "moe_intermediate_size"]
    missing = [k for k in need if conf.get(k) in (None, "")]
    if missing:
        raise StepError(f"config.json lacks {', '.join(missing)}: not a Gemma4 text config this tier can map "
                        "to Megatron flags")
    flags = ["--num-layers", conf["num_hidden_layers"], "--hidden-size", conf["hidden_size"],
             "--ffn-hidden-size", conf["intermediate_size"], "--num-attention-heads", conf["num_attention_heads"],
             "--num-query-groups", conf["num_key_value_heads"], "--kv-channels", conf["head_dim"],
             "--norm-epsilon", conf.get("rms_norm_eps", 1e-6), "--vocab-size", conf["vocab_size"]]
    if conf.get("enable_moe_block"):
        flags += ["--num-experts", conf["num_experts"], "--moe-router-topk", conf["top_k_experts"],
                  "--moe-ffn-hidden-size", conf["moe_intermediate_size"]]
    if conf.get("tie_word_embeddings") is False:
        flags += ["--untie-embeddings-and-output-weights"]
    return [str(f) for f in flags]


def extra_args(conf: dict, kind: str, ckpt_dir: Path) -> list[str]:
    """Everything the tier appends to the run script's train.py flags (EXTRA_ARGS)."""
    if kind not in KINDS:
        raise StepError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    if bool(conf.get("enable_moe_block")) != (kind == "moe"):
        raise StepError(f"{ckpt_dir}/config.json is {'an MoE' if conf.get('enable_moe_block') else 'a dense'} "
                        f"Gemma4 but the {kind} run script was asked for")
    return model_flags(conf) + [
        "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
        "--context-parallel-size", "1", "--expert-model-parallel-size", "1", "--expert-tensor-parallel-size", "1",
        "--rollout-num-gpus-per-engine", "1", "--sglang-mem-fraction-static", "0.3",
        "--use-kl-loss", "--kl-loss-coef", "0",
        "--rm-type", "f1", "--rollout-batch-size", str(ROLLOUT_BATCH), "--n-samples-per-prompt", str(N_SAMPLES),
        "--global-batch-size", str(ROLLOUT_BATCH * N_SAMPLES), "--lr", str(LR), "--skip-eval-before-train",
    ]


def run_env(base: dict, *, ckpt_dir: Path, data_dir: Path, save_dir: Path, megatron: Path, extra: list[str],
            dry_run: bool = False) -> dict:
    """The environment for the run script: its knobs (launch.sh), a private Ray head."""
    for p in (ckpt_dir, data_dir, save_dir):
        if any(c.isspace() for c in str(p)):
            raise StepError(f"{p}: the run script splits EXTRA_ARGS on whitespace; use a work folder without spaces")
    env = {k: v for k, v in base.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "DRY_RUN", "ACTOR_GPUS")}
    env.update(HF_CHECKPOINT=str(ckpt_dir), PROMPT_DATA=str(data_dir / "train.jsonl"),
               EVAL_DATA=str(data_dir / "eval.jsonl"), SAVE_DIR=str(save_dir), NUM_NODES="1", GPUS_PER_NODE="1",
               MODE="colocate", RESPONSE_LEN=str(RESPONSE_LEN), NUM_ROLLOUT=str(NUM_ROLLOUT), WANDB="0",
               MEGATRON_DIR=str(megatron), BIND_ADDRESS="127.0.0.1", EXTRA_ARGS=" ".join(extra),
               RAY_DEDUP_LOGS="0")  # every actor's line in the job's log, none folded into "repeated"
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    if dry_run:
        env["DRY_RUN"] = "1"
    return env


def tokenizer_files(conf: dict) -> dict[str, dict]:
    """A word-level tokenizer for the tiny checkpoint's vocabulary (tokenizers' JSON format, loaded
    by transformers' PreTrainedTokenizerFast): token id i is the word `word(i)`, ids 0-3 the special
    tokens; words split on whitespace and decode joined by spaces. The chat template passes the
    user's text through (the run scripts always pass --apply-chat-template)."""
    vocab = dict(SPECIAL)
    vocab.update({word(i): i for i in range(len(SPECIAL), int(conf["vocab_size"]))})
    added = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for t, i in SPECIAL.items()]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
           "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
           "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": int(conf.get("max_position_embeddings", 4096)),
           "clean_up_tokenization_spaces": False,
           "chat_template": "{% for message in messages %}{{ message['content'] }}{% endfor %}"}
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return {"tokenizer.json": tok, "tokenizer_config.json": cfg, "special_tokens_map.json": special}


def write_data(dest: Path, vocab_size: int, seed: int = 0) -> tuple[Path, Path]:
    """train.jsonl and eval.jsonl: {"prompt": words, "label": words} a line (--input-key prompt
    --label-key label, as the run scripts read GSM8K)."""
    rng = random.Random(seed)
    first = len(SPECIAL)
    dest.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": " ".join(word(rng.randrange(first, vocab_size)) for _ in range(PROMPT_WORDS)),
             "label": " ".join(word(rng.randrange(first, vocab_size)) for _ in range(LABEL_WORDS))}
            for _ in range(N_PROMPTS)]
    train, ev = dest / "train.jsonl", dest / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return train, ev


def prepare(src: Path, dest: Path) -> dict:
    """The run's checkpoint folder: the tiny checkpoint (config.json, weights) with the tokenizer
    beside it, and its data. Returns the config."""
    conf = json.loads((src / "config.json").read_text())
    ck = dest / "ckpt"
    ck.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        if (src / name).exists():
            shutil.copyfile(src / name, ck / name)
    for name, body in tokenizer_files(conf).items():
        (ck / name).write_text(json.dumps(body) + "\n")
    write_data(dest / "data", int(conf["vocab_size"]))
    return conf


# ------------------------------------------------------------------ the command the script builds


def train_command(dry_run_output: str) -> list[str]:
    """The train.py argv from the run script's DRY_RUN=1 output (its `+ ray job submit ... --
    python3 .../train.py ...` line)."""
    for line in dry_run_output.splitlines():
        if line.startswith("+ ") and " job submit " in line and "train.py" in line:
            argv = shlex.split(line[2:])
            at = next(i for i, a in enumerate(argv) if a.endswith("train.py"))
            return argv[at + 1:]
    raise StepError("the run script's dry run printed no `ray job submit ... train.py` line")


def effective(argv: list[str]) -> dict[str, list[str]]:
    """Each flag's values as argparse would keep them: the last occurrence wins; a switch maps to []."""
    out: dict[str, list[str]] = {}
    flag = None
    for a in argv:
        if a.startswith("--"):
            flag = a
            out[flag] = []
        elif flag is not None:
            out[flag].append(a)
    return out


def _same(want: list[str], got: list[str]) -> bool:
    if want == got:
        return True
    try:
        return len(want) == len(got) and all(float(a) == float(b) for a, b in zip(want, got))
    except ValueError:
        return False


def check_command(argv: list[str], extra: list[str], kind: str, ckpt_dir: Path | None = None) -> list[str]:
    """What is wrong with the train.py command: each flag of `extra` must be in effect with its
    value, the MoE run must replay the rollout's routing, and (given `ckpt_dir`) the run script
    must load the HF checkpoint (`--ref-load`; slime's raw mode asserts without it). [] when
    nothing is."""
    have = effective(argv)
    wrong = []
    if ckpt_dir is not None and have.get("--ref-load") != [str(ckpt_dir)]:
        wrong.append(f"--ref-load is {' '.join(have.get('--ref-load') or ['missing'])!r}, not the HF checkpoint "
                     f"{ckpt_dir} (slime's raw mode loads its first weights from it)")
    for flag, vals in effective(extra).items():
        got = have.get(flag)
        if got is None:
            wrong.append(f"{flag} is missing")
        elif not _same(vals, got):
            wrong.append(f"{flag} is {' '.join(got)!r}, the tier asked for {' '.join(vals)!r}")
    if kind == "moe" and "--use-rollout-routing-replay" not in have:
        wrong.append("--use-rollout-routing-replay is not set for the MoE run")
    if "--colocate" not in have:
        wrong.append("--colocate is not set")
    return wrong


# ------------------------------------------------------------------ reading slime's log


@dataclass
class Log:
    actor_rollout: dict[int, dict] = field(default_factory=dict)  # data.py "rollout N: {...}"
    actor_step: dict[int, dict] = field(default_factory=dict)  # model.py "step N: {...}"
    manager_rollout: dict[int, dict] = field(default_factory=dict)  # rollout.py "perf N: {...}"
    events: list[tuple[str, int]] = field(default_factory=list)  # training actor, in order: (what, N)
    unreadable: list[str] = field(default_factory=list)


def _value(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name) and node.id in ("nan", "inf"):
        return float(node.id)
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:  # np.float64(0.5), float('nan')
        return float(_value(node.args[0]))
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def metrics_dict(body: str) -> dict:
    """A metrics dict as slime's f-string prints it (Python's repr; nan and inf bare)."""
    return _value(ast.parse(body, mode="eval").body)


def parse_log(text: str) -> Log:
    log = Log()
    for raw in text.splitlines():
        line = ANSI.sub("", raw)
        m = LINE.search(line)
        if not m:
            continue
        file, msg = m["file"], m["msg"]
        if file == "memory_utils.py" and "Memory-Usage after update_weights" in msg:
            log.events.append(("update_weights", -1))
            continue
        mm = METRICS.match(msg)
        if not mm:
            continue
        tag, n, body = mm["tag"], int(mm["id"]), mm["body"]
        into = {("data.py", "rollout"): log.actor_rollout, ("model.py", "step"): log.actor_step,
                ("rollout.py", "perf"): log.manager_rollout}.get((file, tag))
        if into is None:
            continue
        try:
            into[n] = metrics_dict(body[: body.rindex("}") + 1])
        except (ValueError, SyntaxError) as e:
            log.unreadable.append(f"{file} {tag} {n}: {e}")
            continue
        if into is not log.manager_rollout:
            log.events.append((tag, n))
    return log


# ------------------------------------------------------------------ the decision


def decide(log: Log) -> tuple[bool, str, dict]:
    """(passed, what was found, figures) for a finished run's log; figures["failed"] names the
    checks not met: "events" (a rollout, train step or the update missing from the log), "metrics",
    "reference", "arrived", "moved"."""
    missing = []
    for n in range(NUM_ROLLOUT):
        if n not in log.manager_rollout:
            missing.append(f"rollout {n} (the rollout manager's `perf {n}` line)")
        if n not in log.actor_rollout:
            missing.append(f"the training actor's log-probabilities of rollout {n} (`rollout {n}`)")
        if n not in log.actor_step:
            missing.append(f"train step {n} (`step {n}`)")
    ev = log.events
    try:
        s0, r1 = ev.index(("step", 0)), ev.index(("rollout", 1))
        synced = ("update_weights", -1) in ev[s0:r1]
    except ValueError:
        synced = False
    if not synced:
        missing.append("a weight update between train step 0 and rollout 1 (`Memory-Usage after update_weights`)")
    if log.unreadable:
        missing.append("readable metrics (" + "; ".join(log.unreadable) + ")")
    if missing:
        return False, "not in slime's log: " + "; ".join(missing), {"failed": ["events"]}
    keys = {"rollout/log_probs", "rollout/ref_log_probs", "rollout/rollout_log_probs"}
    for n in range(NUM_ROLLOUT):
        lack = sorted(keys - set(log.actor_rollout[n]))
        if "train/train_rollout_logprob_abs_diff" not in log.actor_step[n]:
            lack.append("train/train_rollout_logprob_abs_diff")
        if lack:
            return False, (f"rollout {n}'s metrics lack {', '.join(lack)} (ref_log_probs needs --use-kl-loss in effect; "
                           "rollout_log_probs SGLang's log-probabilities)"), {"failed": ["metrics"]}
    r0, r1d = log.actor_rollout[0], log.actor_rollout[1]
    gap0 = float(log.actor_step[0]["train/train_rollout_logprob_abs_diff"])
    gap1 = float(log.actor_step[1]["train/train_rollout_logprob_abs_diff"])
    same0 = float(r0["rollout/log_probs"]) - float(r0["rollout/ref_log_probs"])
    moved = float(r1d["rollout/log_probs"]) - float(r1d["rollout/ref_log_probs"])
    limit = 1.5 * gap0 + 0.01
    checks = {
        "reference": (abs(same0) <= limit,
                      f"reference vs trained model at rollout 0 {same0:+.4f} (|.| <= {limit:.4f})"),
        "arrived": (gap1 <= limit, f"mean |log p| SGLang vs trained model: rollout 0 {gap0:.4f}, "
                                   f"rollout 1 {gap1:.4f} (<= {limit:.4f})"),
        "moved": (moved >= 2 * limit, f"the step added {moved:+.4f} to the mean log p of rollout 1's tokens "
                                      f"(>= {2 * limit:.4f})"),
    }
    failed = [k for k, (c, _) in checks.items() if not c]
    figures = dict(gap0=gap0, gap1=gap1, limit=limit, moved=moved, ref_vs_initial=same0,
                   sglang_minus_ref_1=float(r1d["rollout/rollout_log_probs"]) - float(r1d["rollout/ref_log_probs"]),
                   raw_reward=[log.actor_rollout[n].get("rollout/raw_reward") for n in range(NUM_ROLLOUT)],
                   grad_norm=[log.actor_step[n].get("train/grad_norm") for n in range(NUM_ROLLOUT)],
                   failed=failed)
    text = "; ".join(t + ("" if c else " NOT MET") for c, t in checks.values())
    return not failed, text, figures


TODO = {
    "events": "the run ended without one of the steps: read the log from the first Traceback or error",
    "metrics": "slime's metrics changed names or --use-kl-loss was not in effect: read the log's `rollout N:` lines",
    "reference": "the reference model does not score rollout 0 as the trained model does: the actor and the "
                 "reference were not loaded alike from --ref-load, or (MoE) Megatron's own routing differs from "
                 "SGLang's replayed routing on many tokens; read the log",
    "arrived": "SGLang does not serve the trained weights after slime's update_weights: compare the Gemma4 sync's "
               "names with SGLang's load_weights (tests/sglang_gemma4/test_cross_engine.py) and read the log",
    "moved": "the step did not move the policy past the engines' disagreement, or rollout 1 was not sampled from "
             "the moved policy: read raw_reward and grad_norm (all-equal rewards give GRPO no gradient)",
}


def todo_for(failed: list[str]) -> str:
    return "; ".join(TODO[k] for k in failed) or "read the log"


# ------------------------------------------------------------------ running it (the suite's side)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stop(p: subprocess.Popen, grace: float = 120.0) -> None:
    """Stop the run script this tier started: SIGTERM to it and to its direct children (bash runs
    its EXIT trap, which stops the Ray head it started by PID, only once its foreground command has
    ended); SIGKILL to it after `grace`."""
    for pid in _children(p.pid) + [p.pid]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def preflight(slime: Path, megatron: Path, kind: str, gpus: int) -> str | None:
    """Why the slime step cannot run here (a skip), naming the component; None when it can."""
    if gpus < 1:
        return "GPU: none in this container (the step is colocated on one)"
    script = slime / RUN_SCRIPTS[kind]
    if not script.is_file():
        return (f"slime: no {RUN_SCRIPTS[kind]} in {slime} (the Gemma4 run scripts come with the Gemma4 group: "
                "make image GEMMA4=1)")
    if not (slime / "train.py").is_file():
        return f"slime: no train.py in {slime}"
    if not (megatron / "megatron").is_dir():
        return f"Megatron-LM: no tree at {megatron}"
    for tool, comp in (("ray", "Ray"), ("python3", "python3"), ("bash", "bash")):
        if shutil.which(tool) is None:
            return f"{comp}: `{tool}` is not on PATH"
    return None


NEEDS = ("sglang", "sgl_kernel", "ray", "torch_memory_saver", "transformer_engine")


def step(slime: Path, megatron: Path, src_ckpt: Path, work: Path, kind: str, gpus: int,
         timeout: float = TIMEOUT_S, find_spec=None) -> tuple[str, str, dict, str]:
    """One slime train.py run: (status pass|FAIL|skip, detail, figures, todo)."""
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    why = preflight(slime, megatron, kind, gpus)
    if why is None:
        lack = [m for m in NEEDS if find_spec(m) is None]
        if lack:
            why = f"{', '.join(lack)} not installed (the static tier says whether this image should have it)"
    if why:
        return "skip", why, {}, ""
    dest = work / f"slime-{kind}"
    if dest.exists():
        shutil.rmtree(dest)
    conf = prepare(src_ckpt, dest)
    extra = extra_args(conf, kind, dest / "ckpt")
    script = slime / RUN_SCRIPTS[kind]
    kw = dict(ckpt_dir=dest / "ckpt", data_dir=dest / "data", save_dir=dest / "save", megatron=megatron, extra=extra)
    dry = subprocess.run(["bash", str(script)], env=run_env(os.environ, dry_run=True, **kw), capture_output=True,
                         text=True, timeout=120)
    (dest / "dry-run.log").write_text(dry.stdout + "\n--- stderr ---\n" + dry.stderr)
    if dry.returncode != 0:
        return "FAIL", f"{RUN_SCRIPTS[kind]} DRY_RUN=1 exited {dry.returncode}: {dry.stderr.strip()[-400:]}", {}, \
            f"read {dest / 'dry-run.log'}"
    wrong = check_command(train_command(dry.stdout), extra, kind, dest / "ckpt")
    if wrong:
        return "FAIL", f"the train.py command {RUN_SCRIPTS[kind]} builds: " + "; ".join(wrong), {}, \
            "the run script's flags come after EXTRA_ARGS or drop them: read " + str(dest / "dry-run.log")
    log_path = dest / "slime.log"
    t0 = time.monotonic()
    with open(log_path, "w") as out:
        p = subprocess.Popen(["bash", str(script)], env=run_env(os.environ, **kw), stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(p)
            return "FAIL", f"slime's train.py did not finish within {timeout:.0f} s (stopped)", {}, f"read {log_path}"
    text = log_path.read_text(errors="replace")
    seconds = time.monotonic() - t0
    ok, detail, figures = decide(parse_log(text))
    if rc != 0:  # what the log shows of the step still helps to find where it broke
        tail = [ln for ln in ANSI.sub("", text).splitlines() if ln.strip()][-6:]
        return "FAIL", (f"{RUN_SCRIPTS[kind]} exited {rc} after {seconds:.0f} s: " + " | ".join(tail)[-600:]
                        + f" (the step as far as the log shows: {detail})"), figures, \
            f"read {log_path} (the first Traceback is where it broke)"
    figures["seconds_run"] = round(seconds, 1)
    head = (f"{RUN_SCRIPTS[kind]} (train.py, {NUM_ROLLOUT} rollouts of {ROLLOUT_BATCH}x{N_SAMPLES}, "
            f"{'routing replay, ' if kind == 'moe' else ''}lr {LR}): ")
    return ("pass" if ok else "FAIL"), head + detail, figures, \
        "" if ok else todo_for(figures.get("failed", [])) + f" ({log_path})"
