#!/usr/bin/env bash
# Makes the folder engine_cycle_gpu.sh takes (BUNDLE, default .gpu, which git ignores through
# .git/info/exclude: add "/.gpu/" there) on a machine with PyPI and the pinned sources:
#   trees.tgz  SGLang v0.5.9's python/sglang with the series applied (tests/sglang_gemma4/sgltree.py),
#              slime (slime/, slime_plugins/) and Megatron-LM (megatron/) with theirs (make workspace);
#   whl/       the wheels of engine_cycle_wheels.txt, for CPython 3.12 on x86-64, hash-checked.
# Then, on the GPU machine:  BUNDLE=.gpu bash tests/sglang_gemma4/engine_cycle_gpu.sh "--kind dense --steps 20" ...
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUNDLE:-.gpu}
PY=${PY:-out/venv/bin/python}
mkdir -p "$B/whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --require-hashes \
  -r tests/sglang_gemma4/engine_cycle_wheels.txt -d "$B/whl"
SGL=$("$PY" tests/sglang_gemma4/sgltree.py | sed -n 's/^SGLang tree \(.*\) with .*/\1/p')
[ -d "$SGL/sglang" ] || { echo "engine_cycle_bundle.sh: no SGLang tree from sgltree.py" >&2; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/sglang"
cp -r "$SGL/sglang" "$T/sglang/"
rm -rf "$T/sglang/sglang/multimodal_gen" "$T/sglang/sglang/test"  # not imported by the server; keeps the carry small
# slime and Megatron at their pins with their series (the gemma4 group included), as the image has them
for up in slime megatron; do
  PYTHONPATH=build "$PY" -c "import sys; from pathlib import Path; from patchstack import manifest, sources, workspace
m = manifest.load(); workspace.init_tree(Path(sys.argv[2]), sources.git_source(m.upstream(sys.argv[1])), sys.argv[1], [])" \
    "$up" "$T/checkout-$up"
  PYTHONPATH=build "$PY" -m patchstack apply "$up" --gemma4 --tree "$T/checkout-$up" >/dev/null
done
mkdir -p "$T/slime" "$T/megatron"
mv "$T/checkout-slime/slime" "$T/checkout-slime/slime_plugins" "$T/slime/"
mv "$T/checkout-megatron/megatron" "$T/megatron/"
rm -rf "$T/checkout-slime" "$T/checkout-megatron"
find "$T" -name __pycache__ -prune -exec rm -rf {} +
tar czf "$B/trees.tgz" -C "$T" .
du -sh "$B"
