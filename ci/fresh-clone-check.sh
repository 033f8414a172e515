#!/usr/bin/env bash
# The suite as a machine that never had SLURM and has no ../shared beside the checkout sees it.
#
#   ci/fresh-clone-check.sh [DIR]     clone HEAD into DIR (default: a new mktemp -d), then run the
#                                     README's test command (.ci/run) there, in a private mount
#                                     namespace where every SLURM and munge binary is /dev/null
#
# A green CI on a developer machine can hide a missing install step or a test that needs SLURM
# before the SLURM tests install it; this is the check DEVELOPERS.md asks for before a session ends.
# Needs root (unshare -m, bind mounts). Prints the clone's path and exits with .ci/run's status.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$(mktemp -d /tmp/ranke-fresh.XXXXXX)}
rm -rf "$dest"
git clone -q "$repo" "$dest"
echo "fresh clone: $dest (HEAD $(git -C "$dest" rev-parse --short HEAD))" >&2
if [ -e "$dest/../shared" ]; then
  echo "ERROR: $dest/../shared exists; pick a directory without a shared/ sibling" >&2
  exit 2
fi

hide=""
for b in srun sbatch squeue sacct scancel sinfo scontrol sacctmgr slurmctld slurmd slurmdbd \
  munged munge mungekey; do
  p=$(command -v "$b" || true)
  [ -n "$p" ] && hide="$hide $p"
done

# shellcheck disable=SC2016
exec unshare -m bash -c '
  set -euo pipefail
  for p in '"$hide"'; do mount --bind /dev/null "$p"; done
  cd "$1"
  CI=true bash .ci/run
' _ "$dest"
