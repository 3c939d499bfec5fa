#!/usr/bin/env bash
# The parts of `make image-test`'s gpu tier that run outside the image, on a GPU machine without
# Transformer Engine, flash-attn or sgl-kernel (the one lent to this project): the checkpoint
# generator, our Megatron model (local spec) and SGLang's Gemma4 model classes on the generated
# checkpoints, the rollout/training gap and its bound, and the negative controls.
#   WHEELS: a folder of the small wheels SGLang's model code and megatron-core need (installed with
#   --no-deps into a scratch folder); GEMMA4_SLIME_TREE: the patched slime plugins; SGLANG_TREE:
#   the patched SGLang python/ folder (tests/sglang_gemma4/sgltree.py builds one); OUT: results.
set -u
OUT=${OUT:-out/image-test-gpu}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
if [ -n "${WHEELS:-}" ]; then
  pip install -q --no-deps --target /tmp/image-test-site "$WHEELS"/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/image-test-site${PYTHONPATH:+:$PYTHONPATH}
fi
export SGLANG_HARNESS_STAND_INS=${SGLANG_HARNESS_STAND_INS-IPython,openai}  # packages SGLang only imports, absent there
[ "${SKIP_GPU:-0}" = 1 ] || python3 tests/image/gpu.py --work "$OUT/work" --results "$OUT/gpu.jsonl" --controls > "$OUT/gpu.log" 2>&1
echo "gpu.py exit $?"
grep '^\[gpu\]' "$OUT/gpu.log"
cp "$OUT/work/controls.jsonl" "$OUT/" 2>/dev/null
rm -rf "$OUT/work"
# the rl tier's step, SGLang's model classes standing in for its engine (no sgl-kernel there)
python3 tests/image/rl.py --work "$OUT/rlwork" --results "$OUT/rl.jsonl" --engine harness > "$OUT/rl.log" 2>&1
echo "rl.py exit $?"
grep '^\[rl\]' "$OUT/rl.log"; grep -i "error\|Traceback" "$OUT/rl.log" | tail -5
rm -rf "$OUT/rlwork"
