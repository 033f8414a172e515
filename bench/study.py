"""Benchmark: the whole default demo study, `snakemake --cores 2` from nothing, per-stage times.

    .venv/bin/python bench/study.py [--configfile config.yaml] [--cores 2] [--keep DIR]
    .venv/bin/python bench/study.py --parse DIR/.snakemake/log/<run>.snakemake.log

Runs the workflow of this checkout in a fresh temporary directory (so nothing is reused), then
reads Snakemake's own run log back: each job's start is the timestamp printed above its
`rule X:` block, its end the timestamp above `Finished jobid: N`. Prints one row per rule
(jobs, summed job seconds, longest job, first start and last end relative to the run start) and
the run's wall time. Jobs overlap (2 cores), so summed job seconds exceed the wall time.
The load average before/after says whether the machine was shared. It prints timings; it never
asserts them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^\s*(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\S+)$")
FINISHED = re.compile(r"^Finished jobid: (\S+) \(Rule: (\w+)\)")


def parse_log(text: str) -> tuple[dict, float]:
    """{jobid: (rule, start, end)} in seconds from the first timestamp, and the last timestamp."""
    stamp = t0 = None
    rule = None
    jobs: dict[str, list] = {}
    for line in text.splitlines():
        m = STAMP.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
            t0 = stamp if t0 is None else t0
            rule = None
            continue
        m = RULE.match(line)
        if m:
            rule = m.group(1)
            continue
        m = JOBID.match(line)
        if m and rule is not None:
            jobs[m.group(1)] = [rule, stamp - t0, None]
            continue
        m = FINISHED.match(line)
        if m and m.group(1) in jobs:
            jobs[m.group(1)][2] = stamp - t0
    return {k: tuple(v) for k, v in jobs.items()}, (stamp - t0 if stamp is not None else 0.0)


def table(jobs: dict) -> list[tuple]:
    rows: dict[str, list] = {}
    for rule, start, end in jobs.values():
        if end is None:
            continue
        row = rows.setdefault(rule, [rule, 0, 0.0, 0.0, start, end])
        row[1] += 1
        row[2] += end - start
        row[3] = max(row[3], end - start)
        row[4] = min(row[4], start)
        row[5] = max(row[5], end)
    return sorted((tuple(r) for r in rows.values()), key=lambda r: r[4])


def print_table(jobs: dict, last: float, wall: float | None) -> None:
    print(f"{'rule':<16} {'jobs':>4} {'job s (sum)':>12} {'longest s':>10} {'first start':>12} {'last end':>9}")
    for rule, n, total, longest, start, end in table(jobs):
        print(f"{rule:<16} {n:>4} {total:>12.0f} {longest:>10.0f} {start:>12.0f} {end:>9.0f}")
    unfinished = [rule for rule, _, end in jobs.values() if end is None]
    if unfinished:
        print(f"unfinished jobs: {', '.join(sorted(unfinished))}")
    print(f"log span (first to last timestamp): {last:.0f} s")
    if wall is not None:
        print(f"wall time of `snakemake` (start-up and DAG building included): {wall:.0f} s ({wall / 60:.1f} min)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="*", default=[], help="extra config files (default: config.yaml only)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="run in this (new) directory and keep it")
    ap.add_argument("--parse", type=Path, help="only print the table of an existing Snakemake log")
    args = ap.parse_args()

    if args.parse:
        jobs, last = parse_log(args.parse.read_text())
        print_table(jobs, last, None)
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="ranke-study-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"{work} is not empty: the benchmark runs from nothing")
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(Path(bin_dir) / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", str(args.cores)]
    if args.configfile:
        cmd += ["--configfile", *[str(Path(c).resolve()) for c in args.configfile]]
    print(f"load average before: {os.getloadavg()[0]:.2f}   cores: {os.cpu_count()}   dir: {work}")
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        sys.exit(f"snakemake failed (exit {proc.returncode})")
    logs = sorted((work / ".snakemake" / "log").glob("*.snakemake.log"))
    jobs, last = parse_log(logs[-1].read_text())
    print_table(jobs, last, wall)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
