"""`python -m ranke round`: submitit submission with the debug / local executors, requeue, SLURM env,
and the job record that keeps a rerun from submitting a second job beside a live one.

Nothing here needs SLURM: tests that build a SLURM executor (submitit checks that `srun` exists)
or ask the scheduler get fake `srun` / `sacct` / `squeue` commands on a temporary PATH.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit
import torch

from ranke.io import read_parquet
from ranke.train import launch
from ranke.train.launch import RoundJob, make_executor, submit_round


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # imported here: tests/test_slurm.py imports this module's helpers without the models' imports
    from test_round import make_world  # the tiny world (tests/ is on sys.path under pytest)

    root = tmp_path_factory.mktemp("launch_world")
    cfg = make_world(root)
    cfg["rounds"]["steps"] = 1
    return root, cfg


def _argv(cfg, root, tmp, method="ranke"):
    return ["--config-json", json.dumps(cfg), "--method", method, "--round", "1", "--init", "base",
            "--tokens", str(root / "tokens_train.parquet"), "--work", str(tmp / "work"), "--out", str(tmp / "ckpt"),
            "--log-parquet", str(tmp / "train_log.parquet")]


def test_debug_executor_runs_the_round_and_prints_job_id(world, tmp_path, capsys):
    root, cfg = world
    cfg = copy.deepcopy(cfg)
    cfg["cluster"] = {"executor": "debug", "folder": str(tmp_path / "submitit")}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert launch.main(_argv(cfg, root, tmp_path)) == 0
    finally:
        torch.set_num_threads(n)
    assert "submitted round job" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "DONE", "decoder.pt", "decoder_ema.pt", "policy.pt", "policy_ema.pt", "state.pt"]
    assert len(read_parquet(tmp_path / "train_log.parquet", "train_log")) == 1


def test_failing_round_makes_the_driver_fail(world, tmp_path, capsys):
    root, cfg = world
    bad = copy.deepcopy(cfg)
    bad["cluster"] = {"executor": "debug", "folder": str(tmp_path / "submitit")}
    bad["methods"]["policy"]["mode"] = "bogus"
    assert launch.main(_argv(bad, root, tmp_path, method="policy")) == 1
    assert "round failed" in capsys.readouterr().err and not (tmp_path / "ckpt").exists()


def test_checkpoint_requeues_the_same_round():
    job = RoundJob({"cfg": {}, "method": "ranke", "round_idx": 2, "work_dir": "w"})
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, RoundJob) and delayed.function.kwargs == job.kwargs


def fake_commands(monkeypatch, directory: Path, scripts: dict[str, str]) -> None:
    """Executables `name` running the bash `script`, first on PATH (so no real SLURM is needed or used)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, script in scripts.items():
        path = directory / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(script))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", str(directory) + os.pathsep + os.environ.get("PATH", ""))


class FinishedJob:
    """A submitted job that has already ended with success (its result file is there)."""

    num_tasks = 1

    def __init__(self, folder: Path, job_id: str):
        self.job_id = job_id
        self.paths = submitit.core.utils.JobPaths(folder / "%j", job_id)
        self.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
        self.paths.result_pickle.write_bytes(b"")

    def task(self, k):
        return self

    def done(self, force_check=False):
        return True

    def results(self):
        return ["ok"]


def test_slurm_parameters_and_clean_env(monkeypatch, tmp_path):
    # submitit's SlurmExecutor refuses to exist without `srun`; nothing here runs it
    fake_commands(monkeypatch, tmp_path / "bin", {"srun": "exit 1\n"})
    cluster = {"executor": "slurm", "folder": str(tmp_path / "submitit"), "slurm": {
        "partition": "gpu", "account": "proj", "gpus_per_node": 2, "cpus_per_task": 4, "mem_gb": 16,
        "timeout_min": 30, "max_num_timeout": 5, "setup": ["source venv/bin/activate"]}}
    ex = make_executor(cluster, name="ranke-ranke-r1", world_size=2)
    params = ex._executor.parameters
    assert params["partition"] == "gpu" and params["account"] == "proj" and params["gpus_per_node"] == 2
    assert params["ntasks_per_node"] == 2 and params["time"] == 30 and params["mem"] == "16GB"
    assert params["setup"] == ["source venv/bin/activate"] and ex._executor.max_num_timeout == 5
    assert not {"qos", "constraint", "exclusive", "additional_parameters"} & set(params)  # only where set

    # the site settings of cluster.slurm reach the round job's sbatch script
    site = {**cluster["slurm"], "qos": "high", "constraint": "h100", "exclusive": True,
            "additional_parameters": {"reservation": "paper", "gres": "gpu:h100:2"}}
    ex = make_executor({**cluster, "slurm": site}, name="ranke-ranke-r1", world_size=2)
    script = submitit.slurm.slurm._make_sbatch_string(command="true", folder=tmp_path / "f",
                                                      **ex._executor.parameters)
    for line in ("#SBATCH --qos=high", "#SBATCH --constraint=h100", "#SBATCH --exclusive",
                 "#SBATCH --reservation=paper", "#SBATCH --gres=gpu:h100:2", "#SBATCH --partition=gpu"):
        assert line in script, (line, script)

    # inside a SLURM job (a Snakemake rule) the nested submission must not see SLURM_* variables
    seen = {}

    def fake_submit(self, fn, *args):
        seen["env"] = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SBATCH_"))}
        seen["fn"] = fn
        return FinishedJob(tmp_path / "submitit", "4242")

    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setenv("SBATCH_PARTITION", "x")
    monkeypatch.setattr(submitit.AutoExecutor, "submit", fake_submit)
    cfg = {"cluster": cluster, "train": {"world_size": 1}}
    work = tmp_path / "work"
    job = submit_round(cfg, method="ranke", round_idx=1, init_dir=None, tokens="t", work_dir=str(work),
                       out_dir=str(tmp_path / "o"), log_path=str(tmp_path / "l"))
    assert job.job_id == "4242" and seen["env"] == {} and isinstance(seen["fn"], RoundJob)
    assert os.environ["SLURM_JOB_ID"] == "1"  # restored afterwards
    record = json.loads((work / launch.JOB_RECORD).read_text())
    assert record["executor"] == "slurm" and record["job_id"] == "4242" and record["tasks"] == 1
    assert record["folder"] == str(tmp_path / "submitit" / "4242") and "process_start" not in record
    with pytest.raises(ValueError, match="cluster.executor"):
        make_executor({"executor": "k8s"}, name="x")


def test_wait_asks_the_scheduler_when_no_result_file_comes(monkeypatch, tmp_path):
    """A cancelled round job writes no result: the driver notices through the scheduler state."""

    class CancelledJob:
        job_id, num_tasks = "1", 1
        paths = submitit.core.utils.JobPaths(tmp_path / "%j", "1")  # its result never appears

        def __init__(self):
            self.calls = []

        def task(self, k):
            self.calls.append("result file")
            return self

        def done(self, force_check=False):
            assert force_check  # only the scheduler knows it ended
            self.calls.append("scheduler")
            return True

    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(launch.time, "monotonic", lambda: float(next(clock)))
    job = CancelledJob()
    launch._wait(job, state_every_s=5)
    assert job.calls.count("scheduler") == 1 and job.calls[-1] == "result file"  # a last look once it ended
    assert 3 <= job.calls.count("result file") <= 7  # result-file checks in between


def test_wait_keeps_waiting_for_a_suspended_slurm_job(tmp_path, monkeypatch):
    """SUSPENDED, then RUNNING, then its result: submitit's job.done() would have stopped at SUSPENDED."""
    job = submitit.SlurmJob(folder=tmp_path / "%j", job_id="9100007")
    states = iter(["SUSPENDED", "SUSPENDED", "RUNNING"])

    def state(j):
        if (s := next(states, None)) is None:  # resumed and finished: it writes its result
            job.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
            job.paths.result_pickle.write_bytes(b"")
            return "COMPLETING"
        return s

    monkeypatch.setattr(launch, "slurm_state", state)
    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(launch.time, "monotonic", lambda: float(next(clock)))
    launch._wait(job, state_every_s=10)
    assert job.paths.result_pickle.exists()


# ------------------------------------------------------------------------------------------------
# One round job per work dir: the job record (work/job.json) and what a rerun does with it


# state.pt keeps the process-global Python and NumPy RNG states, which the round neither seeds nor
# draws from (batches and rollout seeds are pure functions of seed and step): they differ between
# any two processes, even two uninterrupted runs of one round.
PROCESS_RNG = {"state.pt.rng.python", "state.pt.rng.numpy"}


def _assert_same(a, b, where: str) -> None:
    """Nested checkpoint contents equal exactly (tensors by value)."""
    if where in PROCESS_RNG:
        return
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_round_outputs(ref_ckpt: Path, ref_log: Path, ckpt: Path, log: Path) -> None:
    """checkpoint/ files and train_log.parquet of two runs of one round: equal (step times aside)."""
    import pandas as pd

    # dot files are not outputs (Snakemake keeps a .snakemake_timestamp in directory outputs)
    names = sorted(p.name for p in ref_ckpt.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("."))
    for name in names:
        if name.endswith(".pt"):
            load = lambda d: torch.load(d / name, map_location="cpu", weights_only=False)  # noqa: E731
            _assert_same(load(ref_ckpt), load(ckpt), name)
        else:
            assert (ref_ckpt / name).read_text() == (ckpt / name).read_text(), name
    a = read_parquet(ref_log, "train_log").drop(columns="step_time_s")
    b = read_parquet(log, "train_log").drop(columns="step_time_s")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n"
                        + (log.read_text()[-4000:] if log else ""))
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s:\n" + (log.read_text()[-4000:] if log else ""))
        time.sleep(0.05)


def job_log_once_running(record: dict) -> str | None:
    """The job's stderr once the round job runs (it logs its environment, then builds the round's
    models for seconds: a kill of the driver from here leaves the job seconds of work)."""
    path = Path(record["folder"]) / f"{record['job_id']}_0_log.err"
    text = path.read_text(errors="replace") if path.exists() else ""
    return text if "environment:" in text else None


def submitted_jobs(folder: Path) -> list[str]:
    """The ids of the jobs submitit submitted into `folder` (one `<id>/<id>_submitted.pkl` each)."""
    return sorted(p.parent.name for p in folder.glob("*/*_submitted.pkl"))


def round_runs_in(folder: Path) -> list[str]:
    """One entry per run_round that started in a job under the submitit folder ("round config:"
    is logged once per run, a resumed one included)."""
    return [p.parent.name for p in folder.glob("*/*_log.err") for _ in range(p.read_text().count("round config:"))]


def test_rerun_after_the_driver_was_killed_reattaches_to_the_running_job(world, tmp_path, capsys, monkeypatch):
    """SIGKILL the driver while its local job runs; the rerun waits for that job (no second one),
    and the outputs equal an uninterrupted run's. (Also the local executor's end-to-end test: the
    round runs in a submitit subprocess named by its pid.)"""
    root, cfg = world
    cfg = copy.deepcopy(cfg)
    cfg["rounds"]["steps"] = 4

    ref = tmp_path / "ref"  # uninterrupted, in this process, with the job's one thread (float results
    ref_cfg = dict(cfg, cluster={"executor": "debug", "folder": str(ref / "submitit")})  # depend on it)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # earlier tests in the same process may have changed it
    try:
        assert launch.main(_argv(ref_cfg, root, ref, method="policy")) == 0
    finally:
        torch.set_num_threads(n)

    run = tmp_path / "run"
    run_cfg = dict(cfg, cluster={"executor": "local", "folder": str(run / "submitit"), "slurm": {"timeout_min": 5}})
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as this process (tests/conftest.py): same float results
    argv = _argv(run_cfg, root, run, method="policy")
    driver_log = tmp_path / "driver.log"
    with open(driver_log, "w") as fh:
        driver = subprocess.Popen([sys.executable, "-m", "ranke", "round", *argv], stdout=fh, stderr=subprocess.STDOUT)
    try:
        record_path = run / "work" / launch.JOB_RECORD
        record = wait_for(lambda: record_path.exists() and json.loads(record_path.read_text()), 120,
                          "job record", driver, driver_log)
        wait_for(lambda: job_log_once_running(record), 180, "the job's start", driver, driver_log)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    job_id = record["job_id"]
    assert record["executor"] == "local" and record["process_start"] == launch.process_start(int(job_id)), \
        "the job must outlive its driver"
    assert not (run / "ckpt").exists()
    capsys.readouterr()

    assert launch.main(argv) == 0
    out = capsys.readouterr().out
    assert f"reattached to round job {job_id} (RUNNING" in out and "submitted round job" not in out, out
    # exactly one job, which trained once
    assert submitted_jobs(run / "submitit") == [job_id]
    assert round_runs_in(run / "submitit") == [job_id]
    assert json.loads(record_path.read_text()) == record
    assert_same_round_outputs(ref / "ckpt", ref / "train_log.parquet", run / "ckpt", run / "train_log.parquet")

    # and once more: the job finished with success, its outputs are there: nothing to do
    assert launch.main(argv) == 0
    assert "submitted round job" not in capsys.readouterr().out
    assert submitted_jobs(run / "submitit") == [job_id]


class _Submissions:
    """make_executor's stand-in: counts submissions, returns finished fake SLURM jobs."""

    def __init__(self, folder: Path):
        self.folder, self.calls = folder, []

    def __call__(self, cluster, *, name, world_size=1):
        subs = self

        class Executor:
            def submit(self, fn):
                subs.calls.append(fn)
                return FinishedJob(subs.folder, str(1000 + len(subs.calls)))

        return Executor()


def _round_kwargs(tmp_path: Path, cfg: dict | None = None) -> dict:
    cfg = cfg or {"cluster": {"executor": "slurm", "folder": str(tmp_path / "submitit")}, "train": {"world_size": 1},
                  "seed": 0}
    return dict(cfg=cfg, method="ranke", round_idx=1, init_dir=None, tokens="t", work_dir=str(tmp_path / "work"),
                out_dir=str(tmp_path / "out"), log_path=str(tmp_path / "log.parquet"))


def _record(tmp_path: Path, kwargs: dict, job_id: str, executor: str = "local", **extra) -> dict:
    """A job record as submit_round writes it, for a job of the round `kwargs` describes."""
    folder = tmp_path / "submitit" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    # the job's own arguments (RoundJob.kwargs), what submit_round fingerprints
    inputs = launch.inputs_fingerprint({("tokens_path" if k == "tokens" else k): v for k, v in kwargs.items()})
    record = {"executor": executor, "job_id": job_id, "tasks": 1, "folder": str(folder), "host": os.uname().nodename,
              "submitted_at": "2026-01-01T00:00:00+00:00", "inputs": inputs, **extra}
    launch.write_job_record(kwargs["work_dir"], record)
    return record


def _write_result(record: dict, outcome: str) -> None:
    import pickle

    with open(Path(record["folder"]) / f"{record['job_id']}_0_result.pkl", "wb") as fh:
        pickle.dump((outcome, "out" if outcome == "success" else "Traceback: boom"), fh)


def _write_outputs(kwargs: dict) -> None:
    Path(kwargs["out_dir"]).mkdir(parents=True)
    (Path(kwargs["out_dir"]) / "DONE").write_text("{}")
    Path(kwargs["log_path"]).write_text("x")


@pytest.fixture
def sleeper():
    """A live process standing in for a local job's controller."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_local_job_is_alive_only_as_the_recorded_process(tmp_path, sleeper):
    kwargs = _round_kwargs(tmp_path)
    start = launch.process_start(sleeper.pid)
    assert start and start == launch.process_start(sleeper.pid)
    _record(tmp_path, kwargs, str(sleeper.pid), process_start=start)
    prev = launch.previous_job(kwargs["work_dir"])
    assert prev.alive and prev.state == "RUNNING" and prev.outcome is None
    # the same pid with another start time is another process (the pid was reused): not the job
    _record(tmp_path, kwargs, str(sleeper.pid), process_start=start + "0")
    prev = launch.previous_job(kwargs["work_dir"])
    assert not prev.alive and prev.state == "INTERRUPTED"
    # a job started on another host cannot be checked from here
    rec = _record(tmp_path, kwargs, str(sleeper.pid), process_start=start)
    launch.write_job_record(kwargs["work_dir"], dict(rec, host="elsewhere"))
    prev = launch.previous_job(kwargs["work_dir"])
    assert not prev.alive and prev.state == "UNKNOWN"
    # an exited, not yet reaped, process is no job
    zombie = subprocess.Popen(["true"])
    wait_for(lambda: launch.process_start(zombie.pid) is None, 10, "zombie")
    zombie.wait()


def test_rerun_with_a_live_job_reattaches_and_does_not_submit(tmp_path, capsys, monkeypatch):
    subs = _Submissions(tmp_path / "submitit")
    monkeypatch.setattr(launch, "make_executor", subs)
    kwargs = _round_kwargs(tmp_path)
    # a job that writes its result a moment later (where submitit puts it), as a round job does
    job = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, pickle, sys, time
        time.sleep(2)
        folder = os.path.join(sys.argv[1], str(os.getpid()))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{os.getpid()}_0_result.pkl"), "wb") as fh:
            pickle.dump(("success", "out"), fh)
        """), str(tmp_path / "submitit")])
    try:
        _record(tmp_path, kwargs, str(job.pid), process_start=launch.process_start(job.pid))
        submitted = submit_round(**kwargs)
    finally:
        job.wait()
    assert submitted.job_id == str(job.pid) and subs.calls == []
    assert f"reattached to round job {job.pid} (RUNNING" in capsys.readouterr().out
    assert submitted.results() == ["out"]


def test_rerun_refuses_a_live_job_of_other_inputs(tmp_path, sleeper, monkeypatch):
    subs = _Submissions(tmp_path / "submitit")
    monkeypatch.setattr(launch, "make_executor", subs)
    kwargs = _round_kwargs(tmp_path)
    record = _record(tmp_path, kwargs, str(sleeper.pid), process_start=launch.process_start(sleeper.pid))
    launch.write_job_record(kwargs["work_dir"], dict(record, inputs="other"))
    with pytest.raises(RuntimeError, match=rf"round job {sleeper.pid} \(RUNNING, local\) still runs .* other inputs"):
        submit_round(**kwargs)
    assert subs.calls == []


@pytest.mark.parametrize("outcome, outputs, submits, says", [
    ("success", True, False, "is COMPLETED and its outputs exist"),
    ("success", False, True, "is COMPLETED, but its outputs are gone"),
    ("error", True, True, "is FAILED: submitting a new one"),
    (None, False, True, "is INTERRUPTED: submitting a new one"),
], ids=["completed", "outputs-gone", "failed", "interrupted"])
def test_rerun_after_the_job_ended(tmp_path, monkeypatch, caplog, outcome, outputs, submits, says):
    subs = _Submissions(tmp_path / "submitit")
    monkeypatch.setattr(launch, "make_executor", subs)
    kwargs = _round_kwargs(tmp_path)
    dead = subprocess.Popen(["true"])
    start = launch.process_start(dead.pid) or "gone"
    dead.wait()
    record = _record(tmp_path, kwargs, str(dead.pid), process_start=start)
    if outcome:
        _write_result(record, outcome)
    if outputs:
        _write_outputs(kwargs)
    with caplog.at_level("INFO", logger="ranke.train.launch"):
        submit_round(**kwargs)
    assert len(subs.calls) == int(submits)
    assert f"previous round job {dead.pid} {says}" in caplog.text
    new = json.loads((tmp_path / "work" / launch.JOB_RECORD).read_text())
    assert new["job_id"] == ("1001" if submits else str(dead.pid))  # a new job overwrites the record


# sacct -X -n -P -o State -j ID (a requeued job: its latest record last)
FAKE_SACCT = """\
for a in "$@"; do
  case $a in
    9100001) echo RUNNING ;;
    9100002) echo "CANCELLED by 0" ;;
    9100005) printf 'PREEMPTED\\nCOMPLETED\\n' ;;
    9100006) echo SUSPENDED ;;
  esac
done
"""
# squeue knows 9100003 (pending; sacct has no row yet); 9100004 is known to neither
FAKE_SQUEUE = """\
case " $* " in
  *" 9100003 "*) echo PENDING ;;
  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
esac
"""


@pytest.mark.parametrize("job_id, state, alive", [
    ("9100001", "RUNNING", True), ("9100002", "CANCELLED", False), ("9100003", "PENDING", True),
    ("9100004", "UNKNOWN", False), ("9100005", "COMPLETED", False),
    ("9100006", "SUSPENDED", True),  # submitit's own job.done() counts this one as done
])
def test_slurm_job_state_from_sacct_then_squeue(tmp_path, monkeypatch, job_id, state, alive):
    fake_commands(monkeypatch, tmp_path / "bin", {"sacct": FAKE_SACCT, "squeue": FAKE_SQUEUE})
    kwargs = _round_kwargs(tmp_path)
    _record(tmp_path, kwargs, job_id, executor="slurm")
    prev = launch.previous_job(kwargs["work_dir"])
    assert isinstance(prev.job, submitit.SlurmJob) and (prev.state, prev.alive) == (state, alive)


def test_rerun_reattaches_to_a_running_slurm_job(tmp_path, monkeypatch, capsys):
    fake_commands(monkeypatch, tmp_path / "bin", {"sacct": FAKE_SACCT, "squeue": FAKE_SQUEUE})
    subs = _Submissions(tmp_path / "submitit")
    monkeypatch.setattr(launch, "make_executor", subs)
    kwargs = _round_kwargs(tmp_path)
    record = _record(tmp_path, kwargs, "9100001", executor="slurm")
    _write_result(record, "success")
    assert submit_round(**kwargs).job_id == "9100001" and subs.calls == []
    assert "reattached to round job 9100001 (RUNNING, slurm" in capsys.readouterr().out


def test_an_unreadable_job_record_is_ignored(tmp_path, monkeypatch, caplog):
    subs = _Submissions(tmp_path / "submitit")
    monkeypatch.setattr(launch, "make_executor", subs)
    kwargs = _round_kwargs(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / launch.JOB_RECORD).write_text('{"executor": "local", "job_')
    submit_round(**kwargs)
    assert len(subs.calls) == 1 and "ignoring the unreadable job record" in caplog.text


def test_a_killed_round_job_is_reported_with_its_signal_cause_and_resume_point(world, tmp_path, monkeypatch):
    """The OOM killer or a kill -9 ends the job without a result: the driver names the signal, the
    likely cause and the checkpoint a rerun resumes from (it used to say 'has not produced any
    output (state: FINISHED)' about 15 s later)."""
    root, cfg = world
    cfg = copy.deepcopy(cfg)
    cfg["rounds"]["steps"] = 200  # long enough to be killed after its first resume checkpoint
    cfg["train"]["checkpoint_every"] = 1
    cfg["cluster"] = {"executor": "local", "folder": str(tmp_path / "submitit"), "slurm": {"timeout_min": 5}}
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    job = submit_round(cfg, method="ranke", round_idx=1, init_dir=None, tokens=str(root / "tokens_train.parquet"),
                       work_dir=str(work), out_dir=str(tmp_path / "ckpt"), log_path=str(tmp_path / "log.parquet"),
                       wait=False)
    try:
        wait_for(lambda: (work / "resume.json").exists(), 180, "the first resume checkpoint")
        os.kill(int(job.job_id), signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(launch.RoundJobDied) as e:
            launch._finish(job, "local", work)
        assert time.monotonic() - t0 < 5  # noticed at once, not at the next 10 s state check
    finally:
        if job._process.poll() is None:
            job._process.kill()
    message = str(e.value)
    assert f"round job {job.job_id} was killed by SIGKILL" in message
    assert "out-of-memory killer" in message
    assert f"resumes from {work / 'resume.pt'} (global step" in message and "steps of this round done" in message


def test_how_a_slurm_job_ended_names_the_state_and_cause(tmp_path, monkeypatch):
    fake_commands(monkeypatch, tmp_path / "bin", {
        "srun": "exit 1\n",
        "sacct": 'echo "OUT_OF_MEMORY|0:125"\n',
    })
    job = submitit.SlurmJob(folder=tmp_path / "%j", job_id="4242")
    text = launch.how_it_ended(job)
    assert text.startswith("ended OUT_OF_MEMORY (exit 0:125); likely: out of memory: raise cluster.slurm.mem_gb")
    assert launch.resume_point(tmp_path / "nowork").startswith("no resume checkpoint in")
