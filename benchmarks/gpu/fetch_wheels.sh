#!/usr/bin/env bash
# Puts into .whl/ (repository root; ignored by git) the wheels that the GPU machine's image lacks,
# for its CPython 3.12 on x86-64 manylinux. Run here, where the package registry is reachable:
#
#   benchmarks/gpu/fetch_wheels.sh            # -> .whl/*.whl (~6 MB)
#
# The image (see /work/.library/device/KINDS.md) has torch 2.11, triton 3.6, transformers 5.17,
# tokenizers, safetensors, pyyaml, tqdm, scipy, matplotlib, tensorboard, pyarrow, pandas, xxhash,
# huggingface-hub, pytest(-xdist, -timeout, -benchmark), but not:
#   deepspeed          (the ZeRO launches; only a source distribution on PyPI: its pure-Python
#                       wheel is built here, no compiled ops: ZeRO-2/3 with torch's AdamW need none)
#   hjson              (deepspeed)
#   pydantic, pydantic-core, annotated-types, typing-inspection   (fastrobust.config, deepspeed)
#   typing-extensions  (pydantic-core needs >= 4.16; carried in case the image's is older)
#   datasets, dill, multiprocess  (fastrobust.data and fastrobust.methods import datasets)
#   fsspec             (datasets 5.2 wants <= 2026.9.0; the version tested with it here)
# Versions are those of the project's CPU environment (requirements/constraints.txt and what it
# resolved to). benchmarks/gpu/run.sh installs them with --no-deps into /tmp/site on the device.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DEST"

BINARY=(
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  fsspec==2026.9.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  hjson==3.1.0
)
# one version of each package in $DEST: two would stop the whole install on the device
for spec in "${BINARY[@]}" deepspeed==0.19.8; do
  name=${spec%%==*}
  rm -f "$DEST/${name//-/_}"-*.whl "$DEST/${name}"-*.whl
done

"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${BINARY[@]}"
"$PY" -m pip wheel --no-deps -w "$DEST" deepspeed==0.19.8

ls -la "$DEST"
du -sh "$DEST"
