"""On a real single-node SLURM cluster (tests/slurm_harness.py): submitit, the profile, the pipeline.

All tests here share one cluster per session (it starts in a few seconds, stops at the end by PID).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import slurm_harness
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
                job = ex.submit(job_env)
        else:
            job = ex.submit(job_env)
        return {"job_id": job.job_id, "env": job.result()}

    out = {
        "outer": job_env(),
        "clean": submit("submitit/clean/%j", True),
        "raw": submit("submitit/raw/%j", False),
    }
    json.dump(out, open(sys.argv[1], "w"), indent=1)
    """
)

TOY_SNAKEFILE = textwrap.dedent(
    """
    localrules: all

    rule all:
        input: "nested.json"

    rule first:
        output: "first.txt"
        resources: runtime=5, mem_mb=500
        shell: "echo $SLURM_JOB_ID > {output}"

    rule nested:
        input: "first.txt"
        output: "nested.json"
        resources: runtime=5, mem_mb=500
        # a SLURM_* variable that only this (outer) job has, whatever SLURM sets in the inner one
        shell: "SLURM_RANKE_TEST_MARKER=from-the-outer-job python nested.py {output}"
    """
)


@pytest.mark.slurm
def test_snakemake_profile_slurm_runs_rules_as_jobs(slurm_cluster, tmp_path):
    """`snakemake --profile slurm` with the installed profile: each rule is a SLURM job."""
    work = tmp_path / "wf"
    work.mkdir()
    (work / "Snakefile").write_text(TOY_SNAKEFILE)
    (work / "nested.py").write_text(NESTED_SCRIPT)
    env = slurm_env({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    subprocess.run([sys.executable, "-m", "ranke", "install-profile"], env=env, check=True, capture_output=True)

    proc = run_bounded([SNAKEMAKE, "--profile", "slurm"], timeout=240, cwd=work, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + "\n" + slurm_cluster.logs()

    # the executor's log names the SLURM job id of each rule ...
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: .*?rule_(\w+)/", out))
    by_rule = {rule: job_id for job_id, rule in submitted.items()}
    assert set(by_rule) == {"first", "nested"}, out[-4000:]
    # ... the rule really ran inside that job ...
    assert (work / "first.txt").read_text().strip() == by_rule["first"]
    result = json.loads((work / "nested.json").read_text())
    assert result["outer"]["SLURM_JOB_ID"] == by_rule["nested"]
    # ... and accounting has every job, completed, with the rule in the plugin's job comment
    inner = [result["clean"]["job_id"], result["raw"]["job_id"]]
    rows = slurm_cluster.wait_final(list(by_rule.values()) + inner)
    for rule, job_id in by_rule.items():
        assert rows[job_id]["State"] == "COMPLETED", rows
        assert f"rule_{rule}" in rows[job_id]["Comment"], rows
    assert all(rows[j]["State"] == "COMPLETED" for j in inner), rows

    # submitit from inside a rule's job: clean_env keeps the outer job's SLURM_* out of the inner job
    assert result["outer"][LEAK_MARKER] == "from-the-outer-job"
    assert result["clean"]["env"]["SLURM_JOB_ID"] == result["clean"]["job_id"]
    assert LEAK_MARKER not in result["clean"]["env"]
    assert result["raw"]["env"].get(LEAK_MARKER) == "from-the-outer-job", "control: without clean_env it leaks"
