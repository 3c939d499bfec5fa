#!/usr/bin/env bash
# engine_cycle.py on the GPU machine lent to this project (no network, no sgl-kernel, torch 2.11):
#   BUNDLE: a folder with trees.tgz (the patched SGLang python/sglang, slime and Megatron trees, as
#   sglang/, slime/, megatron/) and whl/ (the wheels SGLang's server imports that the machine
#   lacks, transformers 4.57.1 as the image has it, torch-memory-saver 0.0.10);
#   RESULTS: where the JSON lines go. Each argument is the options of one engine_cycle.py run, or of
#   one fullsize.py run when it starts with "fullsize":
#     engine_cycle_gpu.sh "--kind dense --steps 20" "--kind dense --steps 4 --control stale-rope" \
#       "fullsize --size 31B"
#   RUN_TIMEOUT: seconds each run may take (0, the default: no limit).
set -u
BUNDLE=${BUNDLE:-.gpu}
RESULTS=${RESULTS:-out/engine-cycle}
W=/tmp/engine-cycle-env
mkdir -p "$RESULTS"
if [ ! -d "$W/site" ]; then
  mkdir -p "$W" && tar xzf "$BUNDLE/trees.tgz" -C "$W" || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$W/site" \
    "$BUNDLE"/whl/*.whl || exit 1
fi
export PYTHONPATH=$W/site${PYTHONPATH:+:$PYTHONPATH}
export SGLANG_TREE=$W/sglang GEMMA4_SLIME_TREE=$W/slime GEMMA4_MEGATRON_TREE=$W/megatron
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$W/triton-cache}
nvidia-smi -L
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
rc=0
i=0
for run in "$@"; do
  i=$((i + 1))
  script=engine_cycle.py results=engine_cycle.jsonl
  case "$run" in fullsize*) script=fullsize.py results=fullsize.jsonl run=${run#fullsize} ;; esac
  echo "=== run $i: $script $run"
  # shellcheck disable=SC2086  # each argument is a whole command line of options
  timeout -k 20 "${RUN_TIMEOUT:-0}" python3 "$(dirname "$0")/$script" $run --work "$W/work$i" \
    --out "$RESULTS/$results" > "$RESULTS/run$i.log" 2>&1
  r=$?
  echo "exit $r$([ $r = 124 ] && echo " (stopped after RUN_TIMEOUT=${RUN_TIMEOUT}s)")"; [ $r = 0 ] || rc=1
  if [ $r != 0 ] && [ "${STOP_ON_FAIL:-0}" = 1 ]; then echo "STOP_ON_FAIL: the runs after run $i were not made"; fi
  grep -E '^\[cycle\]|^\[control|^\[fullsize\]' "$RESULTS/run$i.log" | cut -c1-600
  grep -E 'Error|Traceback|NotImplemented' "$RESULTS/run$i.log" | grep -v Warning | tail -6 | cut -c1-400
  if [ $r != 0 ] && [ "${STOP_ON_FAIL:-0}" = 1 ]; then break; fi
done
exit $rc
