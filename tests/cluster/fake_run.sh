#!/bin/bash
# CPU stand-in for slime's run scripts (/root/slime/scripts/run-gemma4-*.sh) in the Slurm tests,
# with the same interface: with RAY_ADDRESS set it starts no Ray, it submits its job to that cluster
# with `ray job submit` and exits with the job's status; it reads MASTER_ADDR, NUM_NODES,
# GPUS_PER_NODE, HF_CHECKPOINT, DATA_DIR, SAVE_DIR, and Ray's token through RAY_AUTH_MODE and
# RAY_AUTH_TOKEN_PATH. Test knobs: FAKE_EXIT=<code> exits with it at once; FAKE_HOLD=<file> waits
# for that file before submitting (the test probes the running cluster meanwhile).
set -euo pipefail
: "${RAY_ADDRESS:?the stand-in expects an existing cluster}"
for v in MASTER_ADDR NUM_NODES GPUS_PER_NODE HF_CHECKPOINT DATA_DIR SAVE_DIR RAY_AUTH_MODE RAY_AUTH_TOKEN_PATH; do
  [ -n "${!v:-}" ] || { echo "fake_run.sh: $v is not set" >&2; exit 90; }
done
env | grep -E '^(RAY_ADDRESS|MASTER_ADDR|MASTER_PORT|NUM_NODES|GPUS_PER_NODE|HF_CHECKPOINT|DATA_DIR|SAVE_DIR|RAY_AUTH_MODE|RAY_AUTH_TOKEN_PATH)=' \
  | sort >"$SAVE_DIR/driver-env-${SLURM_JOB_ID}.txt"
if [ -n "${FAKE_EXIT:-}" ]; then echo "fake_run.sh: exiting with $FAKE_EXIT as asked"; exit "$FAKE_EXIT"; fi
if [ -n "${FAKE_HOLD:-}" ]; then
  touch "$FAKE_HOLD.waiting"
  for _ in $(seq 300); do [ -e "$FAKE_HOLD" ] && break; sleep 1; done
fi
exec ray job submit --address "$RAY_ADDRESS" -- \
  python3 "$(dirname "$0")/fake_train.py" "$NUM_NODES" "$GPUS_PER_NODE" "$SAVE_DIR/result-${SLURM_JOB_ID}.json"
