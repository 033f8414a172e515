"""On a real single-node SLURM cluster (tests/slurm_harness.py): submitit, the profile, the pipeline.

All tests here share one cluster per session (it starts in a few seconds, stops at the end by PID).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import slurm_harness
from conftest import compare_results
from slurm_harness import REPO, VENV_BIN, run_bounded, slurm_cluster, slurm_env  # noqa: F401  (fixture)

SNAKEMAKE = str(VENV_BIN / "snakemake")
LEAK_MARKER = "SLURM_RANKE_TEST_MARKER"  # a SLURM_* variable only the outer job has (see TOY_SNAKEFILE)


# ------------------------------------------------------------------------------------------------
# The harness itself (no cluster)


def test_harness_script_parses():
    subprocess.run(["bash", "-n", str(slurm_harness.HARNESS)], check=True)
    usage = subprocess.run(["bash", str(slurm_harness.HARNESS)], capture_output=True, text=True)
    assert usage.returncode == 2 and "install" in usage.stderr and "down" in usage.stderr


def test_harness_skips_only_when_slurm_cannot_be_installed(monkeypatch):
    monkeypatch.delenv("RANKE_REQUIRE_SLURM", raising=False)
    monkeypatch.setattr(slurm_harness.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        slurm_harness.ensure_slurm_installed()
    monkeypatch.setenv("RANKE_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception, match="RANKE_REQUIRE_SLURM=1 but SLURM tests need root"):
        slurm_harness.ensure_slurm_installed()


def test_harness_skips_when_installed_packages_have_no_usable_binaries(monkeypatch, tmp_path):
    """A machine whose dpkg lists the packages but whose binaries are gone (or /dev/null, as in the
    fresh-machine check) cannot get them back from apt-get: skip with the names, not a start error."""
    monkeypatch.delenv("RANKE_REQUIRE_SLURM", raising=False)
    monkeypatch.setattr(slurm_harness.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_harness, "_packages_installed", lambda: True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in slurm_harness.BINARIES:
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    (bin_dir / "sbatch").chmod(0o644)  # what `mount --bind /dev/null` looks like to which()
    monkeypatch.setattr(slurm_harness, "BINARY_PATH", str(bin_dir))
    with pytest.raises(pytest.skip.Exception, match="not executable: sbatch"):
        slurm_harness.ensure_slurm_installed()
    (bin_dir / "sbatch").chmod(0o755)
    slurm_harness.ensure_slurm_installed()  # all there: no skip


# ------------------------------------------------------------------------------------------------
# Cluster smoke tests


def _add(a: int, b: int) -> dict:
    import os
    import socket

    return {"sum": a + b, "host": socket.gethostname(), "job_id": os.environ.get("SLURM_JOB_ID")}


@pytest.mark.slurm
def test_submitit_job_runs_on_slurm(slurm_cluster, tmp_path, monkeypatch):
    """The round launcher's path: submit from the host inside clean_env, wait, get the result."""
    import submitit

    # the job unpickles `_add` by reference: it must import this test module
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1)
    with submitit.helpers.clean_env():
        job = executor.submit(_add, 2, 3)
    result = job.result()
    assert result["sum"] == 5
    assert result["job_id"] == job.job_id
    rows = slurm_cluster.wait_final([job.job_id])
    assert rows[job.job_id]["State"] == "COMPLETED", rows


# A rule's job is a SLURM job step with the whole SLURM_* environment. Rule `nested` submits a
# submitit job from there twice: inside clean_env (what ranke does) and, as a control that shows
# the check can fail, without it.
NESTED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import submitit

    def job_env():
        return {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}

    def submit(folder, clean):
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1)
        if clean:
            with submitit.helpers.clean_env():
                return ex.submit(job_env)
        return ex.submit(job_env)

    # both submitted before waiting on either: they run side by side
    jobs = {"clean": submit("submitit/clean/%j", True), "raw": submit("submitit/raw/%j", False)}
    out = {"outer": job_env()}
    out.update({k: {"job_id": job.job_id, "env": job.result()} for k, job in jobs.items()})
    json.dump(out, open(sys.argv[1], "w"), indent=1)
    """
)

TOY_SNAKEFILE = textwrap.dedent(
    """
    localrules: all

    rule all:
        input: "first.txt", "nested.json", "flaky.txt"

    # independent, so both are submitted at once (one status-check wait, not two)
    rule first:
        output: "first.txt"
        resources: runtime=5, mem_mb=500
        shell: "echo $SLURM_JOB_ID > {output}"

    rule nested:
        output: "nested.json"
        resources: runtime=5, mem_mb=500
        # a SLURM_* variable that only this (outer) job has, whatever SLURM sets in the inner one
        shell: "SLURM_RANKE_TEST_MARKER=from-the-outer-job python nested.py {output}"

    # a job group whose second job fails until `fixed` exists (and then, like every ranke stage,
    # leaves no output): the first job's output must survive the failed group job
    rule kept:
        output: "kept.txt"
        group: "pair"
        resources: runtime=5, mem_mb=200
        shell: "echo $SLURM_JOB_ID > {output}"

    rule flaky:
        input: "kept.txt"
        output: "flaky.txt"
        group: "pair"
        resources: runtime=5, mem_mb=200
        shell: "test -e fixed && echo $SLURM_JOB_ID > {output}"
    """
)


@pytest.mark.slurm
def test_snakemake_profile_slurm_runs_rules_as_jobs(slurm_cluster, tmp_path):
    """`snakemake --profile slurm` with the installed profile: each rule (or job group) is a SLURM job."""
    work = tmp_path / "wf"
    work.mkdir()
    (work / "Snakefile").write_text(TOY_SNAKEFILE)
    (work / "nested.py").write_text(NESTED_SCRIPT)
    env = slurm_env({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    subprocess.run([sys.executable, "-m", "ranke", "install-profile"], env=env, check=True, capture_output=True)

    t0 = time.monotonic()
    # no retry (the profile's retries: 1 would submit the failing group a second time)
    proc = run_bounded([SNAKEMAKE, "--profile", "slurm", "--retries", "0"], timeout=240, cwd=work, env=env,
                       log=tmp_path / "run1.log")
    timings = {"run_1_s": time.monotonic() - t0}
    out = proc.stdout
    # the job group failed (flaky), and was named; everything else ran
    assert proc.returncode not in (0, 124, 137), out[-6000:] + "\n" + slurm_cluster.logs()
    assert re.search(r"Error in rule flaky:", out), out[-4000:]
    assert (work / "kept.txt").exists() and not (work / "flaky.txt").exists(), out[-4000:]
    kept_mtime = (work / "kept.txt").stat().st_mtime_ns

    # the executor's log names the SLURM job id of each rule ...
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: .*?rule_(\w+)/", out))
    by_rule = {rule: job_id for job_id, rule in submitted.items()}
    assert set(by_rule) == {"first", "nested"}, out[-4000:]
    pair = re.findall(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: .*?/group_pair_flaky_kept/", out)
    assert len(pair) == 1, out[-4000:]
    assert (work / "kept.txt").read_text().strip() == pair[0], "kept ran inside the group's SLURM job"

    # fixed and rerun: only the failed job runs again, the group's finished job is kept
    (work / "fixed").touch()
    t0 = time.monotonic()
    rerun = run_bounded([SNAKEMAKE, "--profile", "slurm"], timeout=240, cwd=work, env=env, log=tmp_path / "run2.log")
    timings["run_2_s"] = time.monotonic() - t0
    print(f"\nSLURM profile test timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    assert rerun.returncode == 0, rerun.stdout[-6000:] + "\n" + slurm_cluster.logs()
    assert (work / "kept.txt").stat().st_mtime_ns == kept_mtime
    assert re.findall(r"^\s*rule (\w+):$", rerun.stdout, re.M) == ["flaky"], rerun.stdout[-4000:]
    assert (work / "flaky.txt").exists()
    # ... the rule really ran inside that job ...
    assert (work / "first.txt").read_text().strip() == by_rule["first"]
    result = json.loads((work / "nested.json").read_text())
    assert result["outer"]["SLURM_JOB_ID"] == by_rule["nested"]
    # ... and accounting has every job, completed, with the rule in the plugin's job comment
    inner = [result["clean"]["job_id"], result["raw"]["job_id"]]
    rows = slurm_cluster.wait_final(list(by_rule.values()) + inner + pair)
    for rule, job_id in by_rule.items():
        assert rows[job_id]["State"] == "COMPLETED", rows
        assert f"rule_{rule}" in rows[job_id]["Comment"], rows
    assert all(rows[j]["State"] == "COMPLETED" for j in inner), rows
    assert rows[pair[0]]["State"] == "FAILED" and "rule_pair" in rows[pair[0]]["Comment"], rows

    # submitit from inside a rule's job: clean_env keeps the outer job's SLURM_* out of the inner job
    assert result["outer"][LEAK_MARKER] == "from-the-outer-job"
    assert result["clean"]["env"]["SLURM_JOB_ID"] == result["clean"]["job_id"]
    assert LEAK_MARKER not in result["clean"]["env"]
    assert result["raw"]["env"].get(LEAK_MARKER) == "from-the-outer-job", "control: without clean_env it leaks"


# ------------------------------------------------------------------------------------------------
# The whole pipeline on the cluster: tests/configs/tiny.yaml, local reference run, two faults.
#
# Invocations (the budget allows few): a local reference run (`snakemake --cores 2`, run alongside
# the cluster runs because those mostly wait on status checks), then two SLURM runs in one working
# directory:
#   A  the literal command + an overlay that sends rounds to SLURM (if tiny.yaml does not) + a bad
#      `score` value (fault 2), while a watcher scancels the first round job that has written a
#      work/ checkpoint (fault 1). Expected: non-zero exit naming the failed rules and their logs,
#      nothing downstream of the cancelled round.
#   B  the same without the bad value. Expected: only what failed (and what depends on it) runs,
#      the cancelled round resumes from its checkpoint, and every result equals the local run's.
#   C  fault 3, the round driver dies: a round's driver (`python -m ranke round`, what the
#      train_round rule runs, with the arguments of that round's last job and new output paths) is
#      SIGKILLed while its SLURM job runs (suspended, so that it cannot end before the rerun looks),
#      then rerun. Expected: the rerun reattaches to that job instead of submitting a second one,
#      and its outputs equal the round's results from run A/B.

TINY = "tests/configs/tiny.yaml"
RESUME_FILE = "resume.pt"  # ranke.train.round.RESUME_FILE (not imported: that module loads torch)
WORKFLOW_FILES = ["Snakefile", "config.yaml", "profiles", "workflow", "envs", "tests/configs"]
# the tiny study's trees (config `study` demo, one replicate: seed 0; workflow/rules/common.smk)
RESULTS = "results/demo"
RUN_DIR = RESULTS + "/{method}/seed_0/round_{round}"
ROUND_LOG = "logs/demo/{method}/seed_0/round_{round}/train.log"  # the train_round rule's log (workflow/rules/train.smk)
SUBMITTED_ROUND = re.compile(r"submitted round job (\d+) \((\w+)")
# Fault 2: a value the schema accepts but a stage rejects when it runs. Only the fid_reference
# rule computes with it (a reference set of one image: "need >= 2 reference images"); the score
# jobs wait for its output, the rest of the DAG is unaffected.
FAILING_RULE = "fid_reference"
FAULT_OVERLAY = {"score": {"fid_reference": {"n": 1}}}
FAULT_MESSAGE = "need >= 2 reference images"
def _copy_workflow(dst: Path) -> None:
    import shutil

    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
        else:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def _write_yaml(path: Path, data: dict) -> str:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path.name


def _local_rules(workdir: Path) -> set[str]:
    """Rules declared `localrules:` anywhere in the workflow (plus the target rule `all`)."""
    text = "\n".join(p.read_text() for p in [workdir / "Snakefile", *sorted((workdir / "workflow").rglob("*.smk"))])
    names = {"all"}
    for block in re.findall(r"^localrules:((?:[ \t]*\w+[ \t]*,?[ \t]*\n?|\n[ \t]+\w+[ \t]*,?)+)", text, re.M):
        names.update(re.findall(r"\w+", block))
    return names


def _without_shown_logs(output: str) -> list[str]:
    """Snakemake's own lines, without the failed jobs' logs it prints (`show-failed-logs`, set by
    the workflow profile).

    A failed SLURM job's log holds the inner Snakemake run of that job, whose "localrule NAME:" and
    "rule NAME:" lines are not jobs of this run. Snakemake prints a log as "Logfile PATH:", a line
    of '=', the log's lines, and the same line of '=' (snakemake/logging.py, show_logs).
    """
    lines, kept, open_rules = output.splitlines(), [], []
    for i, line in enumerate(lines):
        rule = line.strip() and set(line) == {"="}
        if rule and i > 0 and re.match(r"^Logfile .*:$", lines[i - 1]):
            open_rules.append(line)
        elif rule and open_rules and line == open_rules[-1]:
            open_rules.pop()
        elif not open_rules and not re.match(r"^Logfile .*:$", line):
            kept.append(line)
    return kept


def _jobs(output: str) -> list[dict]:
    """Every job snakemake started: rule, local?, wildcards, job group, snakemake job id, SLURM job id.

    A job group (workflow/rules/common.smk) is listed as "Group job NAME (jobs in lexicogr. order):"
    with its jobs indented below, and submitted as one SLURM job named by a uuid: every job of the
    group gets that SLURM job id. Snakemake lists all the groups of a scheduling round before it
    submits them, in the same order, so submissions are matched to listings first in, first out
    (and checked against the group and rule names in the SLURM log path).
    """
    jobs, current, listed = {}, None, []
    for line in _without_shown_logs(output):
        m = re.search(r"Group job (\w+) \(jobs in lexicogr\. order\):$", line)
        if m:
            listed.append({"name": m.group(1), "members": []})
            current = None
            continue
        m = re.match(r"^(\s*)(localrule|rule) (\w+):$", line)
        if m:
            group = listed[-1] if m.group(1) and listed else None
            current = {"rule": m.group(3), "local": m.group(2) == "localrule", "wildcards": "",
                       "group": group["name"] if group else None, "slurm_id": None}
            if group:
                group["members"].append(current)
            continue
        if current is not None:
            m = re.match(r"^\s+jobid: (\d+)$", line)
            if m:
                jobs[int(m.group(1))] = current
                continue
            m = re.match(r"^\s+wildcards: (.*)$", line)
            if m:
                current["wildcards"] = m.group(1)
                continue
            if not line.startswith(" "):
                current = None
        m = re.match(r"^Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (.*)\)", line)
        if m:
            if m.group(1).isdigit():
                jobs[int(m.group(1))]["slurm_id"] = m.group(2)
                continue
            assert listed, f"a group job was submitted that was not listed: {line}"
            group = listed.pop(0)
            rules = sorted({j["rule"] for j in group["members"]})  # Snakemake's GroupJob.name
            rules = rules[:5] + ["..."] if len(rules) > 5 else rules
            assert f"/group_{group['name']}_{'_'.join(rules)}/" in m.group(3), (group, line)
            for job in group["members"]:
                job["slurm_id"] = m.group(2)
    return list(jobs.values())


def _snapshot(workdir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(workdir)): p.stat().st_mtime_ns
        for top in ("results", "resources")
        for p in (workdir / top).rglob("*")
        if p.is_file() and "/work/" not in str(p)
    }


def _freeze_and_cancel(job_id: str) -> None:
    """scancel a job so that it makes no progress after this call and leaves no process behind.

    A plain scancel sends SIGTERM, which a submitit job ignores for KillWait seconds: long enough
    for a tiny round to finish. So: suspend (SIGSTOP), note the job's PIDs, scancel (the job is
    CANCELLED), then SIGKILL those PIDs (SLURM does not kill the processes of a suspended job).
    """
    import os
    import signal

    subprocess.run(["scontrol", "suspend", job_id], capture_output=True, timeout=30)
    listed = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, timeout=30).stdout
    pids = [int(line.split()[0]) for line in listed.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class RoundCanceller:
    """Fault 1: scancel a round job right after its first work/ checkpoint appears.

    A tiny round finishes ~0.5 s after that checkpoint, so the watcher polls every 20 ms and
    freezes the job before cancelling it (_freeze_and_cancel). If a round still wins the race
    (its outputs appear), the next round's checkpoint is used instead.
    """

    def __init__(self, workdir: Path):
        import threading

        self.workdir = workdir
        self.cancelled: dict | None = None
        self.missed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self):
        tried = set()
        while not self._stop.is_set() and self.cancelled is None:
            # the resume checkpoint only: work/ also holds job.json, written at submission
            for resume in self.workdir.glob(f"{RESULTS}/*/seed_0/round_*/work/{RESUME_FILE}"):
                method, round_dir = resume.parts[-5], resume.parts[-3]
                if (method, round_dir) in tried:
                    continue
                log = self.workdir / ROUND_LOG.format(method=method, round=round_dir.split("_")[1])
                ids = SUBMITTED_ROUND.findall(log.read_text()) if log.exists() else []
                if not ids:
                    continue
                tried.add((method, round_dir))
                job_id = ids[-1][0]
                _freeze_and_cancel(job_id)
                # the job is gone from the queue once cancelled; then check who won the race
                for _ in range(300):
                    listed = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "R,S,CG,PD"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
                    if not listed:
                        break
                    time.sleep(0.1)
                if (resume.parent.parent / "checkpoint").exists():
                    self.missed.append(f"{method}/{round_dir} (job {job_id}) finished before the cancel")
                    continue
                self.cancelled = {"method": method, "round": int(round_dir.split("_")[1]), "job_id": job_id,
                                  "checkpoint": str(resume.relative_to(self.workdir))}
                return
            self._stop.wait(0.02)


@pytest.mark.slow
@pytest.mark.slurm
def test_pipeline_on_slurm_matches_local_and_recovers(slurm_cluster, tiny_local_study, tmp_path):
    from ranke.config import load_config

    if not (REPO / TINY).exists():
        pytest.fail(f"{TINY} is missing: the pipeline's tiny CI configuration is needed for this test")
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    # the local reference: the session's local run of the same configuration (tests/conftest.py)
    local, cluster = tiny_local_study["dir"], tmp_path / "cluster"
    cluster.mkdir()
    _copy_workflow(cluster)
    config = load_config(REPO / TINY)
    env = slurm_env({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    subprocess.run([sys.executable, "-m", "ranke", "install-profile"], env=env, check=True, capture_output=True)

    _cluster_runs(slurm_cluster, cluster, config, env, tmp_path, timings)

    # ---- identical in content to the local run
    problems = compare_results(local, cluster)
    assert not problems, "SLURM results differ from the local run:\n  " + "\n  ".join(problems)

    # ---- run C: the round driver is killed while its job runs; the rerun reattaches
    method = next(m["name"] for m in config["methods"] if m["mode"] != "none")
    _killed_driver_reattaches(slurm_cluster, cluster, env, tmp_path / "driver_killed", method, timings)
    timings["total_s"] = time.monotonic() - t_start
    print(f"\nSLURM e2e timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


def _cluster_runs(slurm_cluster, cluster: Path, config: dict, env: dict, tmp_path: Path, timings: dict) -> None:
    # the literal command, plus overlays: rounds through submitit on SLURM, and (run A) the fault
    # no retries: the injected fault must fail once, not twice (the profile retries a failed job once)
    command = [SNAKEMAKE, "--profile", "slurm", "--retries", "0", "--configfile", TINY]
    overlays = []
    if config["cluster"]["executor"] != "slurm":
        overlays.append(_write_yaml(cluster / "slurm-rounds.yaml", {"cluster": {"executor": "slurm"}}))
    fault = _write_yaml(cluster / "fault.yaml", FAULT_OVERLAY)

    # ---- run A: fault 2 (bad value for `score`) and fault 1 (scancel a round mid-way)
    t0 = time.monotonic()
    with RoundCanceller(cluster) as canceller:
        run_a = run_bounded(command + overlays + [fault], timeout=900, cwd=cluster, env=env, log=tmp_path / "run_a.log")
    timings["slurm_run_a_s"] = time.monotonic() - t0
    out_a = run_a.stdout
    assert run_a.returncode not in (0, 124, 137), f"run A: exit {run_a.returncode}\n{out_a[-5000:]}"
    cancelled = canceller.cancelled
    assert cancelled, (f"no round could be cancelled after its work/ checkpoint and before its end "
                       f"({canceller.missed}): cannot test the cancel\n{out_a[-3000:]}")
    rows = slurm_cluster.wait_final([cancelled["job_id"]])
    assert rows[cancelled["job_id"]]["State"] == "CANCELLED", (
        f"round job {cancelled} was not cancelled mid-way (it ended first?): {rows}")
    m, r = cancelled["method"], cancelled["round"]
    round_log = ROUND_LOG.format(method=m, round=r)
    # snakemake names each failed rule and its log
    assert re.search(rf"Error in rule train_round:(?:\n .*)*?\n\s+log: {re.escape(round_log)}", out_a), out_a[-5000:]
    failed_logs = re.findall(rf"Error in rule {FAILING_RULE}:(?:\n .*)*?\n\s+log: ([^,\s]+)", out_a)
    assert failed_logs, out_a[-5000:]
    for log in failed_logs:
        assert FAULT_MESSAGE in (cluster / log).read_text(), log
    # nothing downstream of the cancelled round ran on partial data
    round_dir = cluster / RUN_DIR.format(method=m, round=r)
    assert not (round_dir / "checkpoint").exists() and not (round_dir / "train_log.parquet").exists()
    assert (cluster / cancelled["checkpoint"]).exists(), "the round's work/ checkpoint must survive the cancel"
    downstream = [round_dir / "samples.parquet", round_dir / "metrics.parquet", cluster / RESULTS / "report"]
    downstream += [cluster / RUN_DIR.format(method=m, round=k) for k in range(r + 1, config["rounds"]["n"] + 1)]
    assert not [str(p) for p in downstream if p.exists()], "outputs downstream of the cancelled round exist"
    after_a = _snapshot(cluster)

    # ---- run B: the fixed config; only what failed (and depends on it) runs, the round resumes
    t0 = time.monotonic()
    run_b = run_bounded(command + overlays, timeout=900, cwd=cluster, env=env, log=tmp_path / "run_b.log")
    timings["slurm_run_b_s"] = time.monotonic() - t0
    out_b = run_b.stdout
    assert run_b.returncode == 0, f"run B: exit {run_b.returncode}\n{out_b[-6000:]}\n{slurm_cluster.logs()}"
    after_b = _snapshot(cluster)
    redone = sorted(p for p, mtime in after_a.items() if after_b.get(p) != mtime)
    assert not redone, f"run B redid outputs that run A had completed: {redone}"
    jobs_b = _jobs(out_b)
    rerun_rules = {j["rule"] for j in jobs_b}
    assert rerun_rules <= {"train_round", "sample", "score", FAILING_RULE, "report", "all"}, rerun_rules
    assert {"train_round", FAILING_RULE, "report"} <= rerun_rules, rerun_rules

    # the cancelled round resumed from its checkpoint (the round job's own log says so)
    ids = SUBMITTED_ROUND.findall((cluster / round_log).read_text())
    assert ids and ids[-1][1] == "slurm", (cluster / round_log).read_text()[-2000:]
    job_logs = "\n".join(p.read_text(errors="replace") for p in (cluster / "logs/submitit" / ids[-1][0]).glob("*log*"))
    resumed = re.search(r"resumed from \S+: (\d+)/(\d+) steps", job_logs)
    assert resumed and 0 < int(resumed.group(1)) < int(resumed.group(2)), job_logs[-3000:]

    # every stage ran as a SLURM job, except the declared local rules; accounting agrees
    local_rules = _local_rules(cluster)
    jobs = _jobs(out_a) + jobs_b
    for job in jobs:
        if job["local"]:
            assert job["rule"] in local_rules, job
        else:
            assert job["slurm_id"], f"rule job without a SLURM job id: {job}"
    rows = slurm_cluster.wait_final([j["slurm_id"] for j in jobs if j["slurm_id"]])
    for job in jobs:
        if job["slurm_id"]:
            row = rows[job["slurm_id"]]
            # the plugin's comment names the rule, or the group (then its rules, possibly cut short)
            assert f"rule_{job['group'] or job['rule']}" in row["Comment"], (job, row)
            # the injected fault fails the first attempt of FAILING_RULE only
            assert row["State"] == "COMPLETED" or (job["rule"] == FAILING_RULE and row["State"] == "FAILED"), (job, row)
    # job groups (workflow/rules/common.smk): the whole demo world was one SLURM job; each round's
    # sample + score shared one; in the demo the last rounds' evaluations and the report were one
    demo_world = {j["slurm_id"] for j in jobs if j["group"] == "demo_world"}
    assert len(demo_world) == 1 and {j["rule"] for j in jobs if j["group"] == "demo_world"} >= {
        "demo_data", "demo_vq", "demo_clip", "demo_text", "demo_gpt", "tokenize", "prompts"}, jobs
    sample_jobs = [j for j in jobs if j["rule"] == "sample"]
    assert sample_jobs and all(j["group"] in ("evaluate", "final_evaluation") for j in sample_jobs), sample_jobs
    for s in sample_jobs:
        assert any(j["rule"] == "score" and j["slurm_id"] == s["slurm_id"] and j["wildcards"] == s["wildcards"]
                   for j in jobs), (s, jobs)
    report = [j for j in jobs if j["rule"] == "report"]
    final_scores = [j for j in jobs if j["rule"] == "score" and j["group"] == "final_evaluation"]
    assert len(report) == 1 and report[0]["group"] == "final_evaluation", report
    assert len(final_scores) == len(config["methods"]), final_scores  # one last round per method
    assert {j["slurm_id"] for j in final_scores} == {report[0]["slurm_id"]}, (report, final_scores)
    # rounds went through submitit to SLURM: every round's latest job completed, named by submitit
    methods = [mm["name"] for mm in config["methods"] if mm["mode"] != "none"]
    round_jobs = {}
    for method in methods:
        for k in range(1, config["rounds"]["n"] + 1):
            found = SUBMITTED_ROUND.findall((cluster / ROUND_LOG.format(method=method, round=k)).read_text())
            assert found and found[-1][1] == "slurm", (method, k)
            round_jobs[found[-1][0]] = f"ranke-{method}-r{k}"
    rows = slurm_cluster.wait_final(list(round_jobs))
    for job_id, name in round_jobs.items():
        assert rows[job_id]["State"] == "COMPLETED" and rows[job_id]["JobName"] == name, rows[job_id]


def _killed_driver_reattaches(slurm_cluster, cluster: Path, env: dict, out: Path, method: str, timings: dict) -> None:
    """Run C (see the header): one SLURM job for a driver that was killed and its rerun."""
    from submitit.core.utils import DelayedSubmission
    from test_launch import assert_same_round_outputs, job_log_once_running, round_runs_in, submitted_jobs, wait_for

    from ranke.train.launch import JOB_RECORD

    # the round's arguments as the train_round rule gave them, from its last job's submission
    last = SUBMITTED_ROUND.findall((cluster / ROUND_LOG.format(method=method, round=1)).read_text())[-1][0]
    kwargs = DelayedSubmission.load(cluster / "logs/submitit" / last / f"{last}_submitted.pkl").function.kwargs
    cfg = dict(kwargs["cfg"], cluster=dict(kwargs["cfg"]["cluster"], folder=str(out / "submitit")))
    argv = [sys.executable, "-m", "ranke", "round", "--config-json", json.dumps(cfg), "--method", method,
            "--round", str(kwargs["round_idx"]), "--init", kwargs["init_dir"] or "base", "--tokens", kwargs["tokens_path"],
            "--work", str(out / "work"), "--out", str(out / "checkpoint"), "--log-parquet", str(out / "train_log.parquet")]
    # and its threads: the rule's shell gets OMP_NUM_THREADS from Snakemake, the job inherits it,
    # and the last update's sums (so the weights) depend on the thread count
    job_log = (cluster / "logs/submitit" / last / f"{last}_0_log.err").read_text(errors="replace")
    env = dict(env, OMP_NUM_THREADS=re.search(r'"threads": (\d+)', job_log).group(1))
    out.mkdir(parents=True)
    t0 = time.monotonic()
    driver_log = out / "driver.log"
    with open(driver_log, "w") as fh:
        driver = subprocess.Popen(argv, cwd=cluster, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                  stderr=subprocess.STDOUT)
    suspended = None
    try:
        record_path = out / "work" / JOB_RECORD
        record = wait_for(lambda: record_path.exists() and json.loads(record_path.read_text()), 60, "job record",
                          driver, driver_log)
        wait_for(lambda: job_log_once_running(record), 120, "the round job's start", driver, driver_log)
        subprocess.run(["scontrol", "suspend", record["job_id"]], check=True, capture_output=True, timeout=30)
        suspended = record["job_id"]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        rerun = slurm_harness.BoundedRun(argv, timeout=300, cwd=cluster, env=env, log=out / "rerun.log")
        try:
            wait_for(lambda: "reattached to round job" in rerun.log.read_text(), 60, "reattach", rerun.proc, rerun.log)
        finally:
            subprocess.run(["scontrol", "resume", suspended], check=True, capture_output=True, timeout=30)
            suspended = None
        done = rerun.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
        if suspended:
            subprocess.run(["scancel", suspended], capture_output=True, timeout=30)
    timings["slurm_run_c_s"] = time.monotonic() - t0
    job_id = record["job_id"]
    assert done.returncode == 0, done.stdout[-4000:] + "\n" + slurm_cluster.logs()
    assert f"reattached to round job {job_id} (SUSPENDED, slurm" in done.stdout, done.stdout[-4000:]
    assert "submitted round job" not in done.stdout, done.stdout[-4000:]
    # one job (one submission in the folder, one start of the round in its log), completed
    assert submitted_jobs(out / "submitit") == [job_id] and round_runs_in(out / "submitit") == [job_id]
    assert slurm_cluster.wait_final([job_id])[job_id]["State"] == "COMPLETED"
    round_dir = cluster / RUN_DIR.format(method=method, round=1)
    assert_same_round_outputs(round_dir / "checkpoint", round_dir / "train_log.parquet", out / "checkpoint",
                              out / "train_log.parquet")
