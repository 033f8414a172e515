#!/usr/bin/env bash
# The conda route end to end: `snakemake --sdm conda` builds envs/ranke.yaml and runs the tiny
# demo study (tests/configs/tiny.yaml) with it, in a fresh copy of the workflow. Prints how long
# the environment took to build and the run took, and exits with Snakemake's status.
#
#   bench/conda_env.sh [DIR]      needs conda or mamba on PATH (Snakemake's two conda frontends) and conda-forge + PyPI
#                                 reachable (the build downloads a few GB: pytorch and its CUDA
#                                 libraries where the machine has a driver)
#
# Not part of the test suite: CI machines cannot reach conda-forge. tests/test_envs.py checks the
# file's form and that it lists exactly pyproject.toml's dependencies.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$(mktemp -d /tmp/ranke-conda.XXXXXX)}
frontend=""
for f in conda mamba; do
  if command -v "$f" >/dev/null; then frontend=$f; break; fi
done
if [ -z "$frontend" ]; then
  echo "no conda or mamba on PATH" >&2
  exit 2
fi

mkdir -p "$dest"
cp -r "$repo/Snakefile" "$repo/config.yaml" "$repo/profiles" "$repo/workflow" "$repo/envs" "$repo/ranke" "$dest/"
mkdir -p "$dest/tests" && cp -r "$repo/tests/configs" "$dest/tests/"
cd "$dest"
echo "workflow copy: $dest; conda frontend: $frontend" >&2

start=$(date +%s)
snakemake --sdm conda --conda-frontend "$frontend" --conda-create-envs-only --cores 2 \
  --configfile tests/configs/tiny.yaml
built=$(date +%s)
snakemake --sdm conda --conda-frontend "$frontend" --cores 2 --configfile tests/configs/tiny.yaml
done_=$(date +%s)

printf '| step | seconds |\n|---|---:|\n| build envs/ranke.yaml | %d |\n| tiny demo study | %d |\n' \
  $((built - start)) $((done_ - built))
