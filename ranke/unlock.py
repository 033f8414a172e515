"""`python -m ranke unlock [DIR]`: after a killed `snakemake`, remove its stale lock, safely.

A `snakemake` that is killed (SIGKILL, a lost login node, the OOM killer) leaves its lock in
`DIR/.snakemake/locks/`, and the next run stops with "Directory cannot be locked". Snakemake's own
`--unlock` removes the lock whether or not another `snakemake` still works in that directory, and
it needs the same config files to parse the workflow first. This command removes the lock only
when no `snakemake` process of this host runs with DIR as its working directory (its cwd or its
`--directory`), and names the one that does otherwise. A `snakemake` on another host (a shared
file system) cannot be seen from here: the message says so.

Then rerun the same command: the workflow profile (profiles/default) sets `rerun-incomplete`, so
the jobs the kill interrupted are redone, and every stage writes atomically, so nothing half-made
is ever taken for an output.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def snakemake_processes(directory: Path) -> list[tuple[int, str]]:
    """(pid, command line) of the live snakemake processes of this host working in `directory`."""
    directory = directory.resolve()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not any(Path(a).name == "snakemake" for a in argv[:3]):  # the program, or python's script
                continue
            workdir = Path(os.readlink(proc / "cwd"))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        for flag in ("--directory", "-d"):
            if flag in argv[:-1]:
                workdir = (workdir / argv[argv.index(flag) + 1]).resolve()
        if workdir == directory:
            found.append((pid, " ".join(a for a in argv if a)))
    return found


def unlock(directory: str | os.PathLike = ".") -> list[Path]:
    """Remove the stale locks of `directory`; RuntimeError naming the process if one still runs there."""
    directory = Path(directory)
    locks_dir = directory / ".snakemake" / "locks"
    locks = sorted(locks_dir.glob("*.lock")) if locks_dir.is_dir() else []
    if not locks:
        return []
    live = snakemake_processes(directory)
    if live:
        pid, cmd = live[0]
        raise RuntimeError(f"{directory.resolve()} is locked by a snakemake that still runs (pid {pid}: {cmd[:200]}); "
                           "wait for it or stop it, then rerun")
    for lock in locks:
        lock.unlink(missing_ok=True)
    return locks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranke unlock", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", nargs="?", default=".", help="the workflow's working directory (default: here)")
    args = p.parse_args(argv)
    try:
        removed = unlock(args.directory)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    if removed:
        print(f"removed {len(removed)} stale lock(s) of {Path(args.directory).resolve()}: no snakemake of this host "
              "works there (one on another host sharing the directory cannot be seen from here); rerun the same "
              "command to continue")
    else:
        print(f"{Path(args.directory).resolve()} is not locked")
    return 0
