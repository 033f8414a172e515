"""`python -m ranke round ...`: submit one training round as a submitit job and wait for it.

The executor comes from config `cluster` (executor: local | debug | slurm, folder, slurm: {...}).
* debug: runs in this process (breakpoints work; used by tests);
* local: a subprocess on this machine (submitit's local executor);
* slurm: sbatch through submitit. The submission is wrapped in `submitit.helpers.clean_env()`:
  when this driver itself runs inside a SLURM job (a Snakemake SLURM rule), the child must not
  inherit SLURM_* / SBATCH_* variables (wrong cpus/mem/GRES, wrong array pickle).
The job is a `submitit.helpers.Checkpointable`: on timeout or preemption it requeues itself, and
`run_round` resumes from the round's work_dir checkpoint (written every train.checkpoint_every steps).
With train.world_size > 1 on SLURM, the job has one task per GPU (tasks_per_node = world_size) and
each task joins the process group from submitit's environment; elsewhere run_round spawns the ranks.

One job per work dir: the job submitted for a round is recorded in `<work_dir>/job.json` right
after submission. A rerun (e.g. after the Snakemake head process died) first reads it: a job that
still runs is reattached to (waited for, never submitted twice); a finished one whose result is a
success and whose outputs exist ends the driver with success; otherwise a new job is submitted and
the record overwritten. See `previous_job` for what "still runs" means per executor.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from ranke.runtime import add_config_arguments, config_from_args, log_environment, setup_logging
from ranke.train import RESUME_FILE, RESUME_INFO

log = logging.getLogger("ranke.train.launch")

JOB_RECORD = "job.json"  # in the round's work dir: the round job last submitted for it
# SLURM job states (sacct / squeue) of a job that runs or may still run (again) on the work dir
SLURM_ALIVE = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "COMPLETING",
    "CONFIGURING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "POWER_UP_NODE",
})


class RoundJob(submitit.helpers.Checkpointable):
    """The submitted callable: one round; requeue-safe (resumes from work_dir)."""

    def __init__(self, kwargs: dict):
        self.kwargs = kwargs

    def __call__(self) -> str:
        from ranke.train.round import run_round

        if not logging.getLogger().handlers:  # a fresh job process (local / slurm); debug keeps the driver's
            setup_logging()
        log_environment({"job": "round", "method": self.kwargs["method"], "round": self.kwargs["round_idx"]})
        cfg = self.kwargs["cfg"]
        world_size = int(cfg["train"].get("world_size", 1))
        env = _task_environment()
        if world_size > 1 and env is not None and env.world_size > 1:
            _init_from_submitit(env, world_size, cfg)
        run_round(**self.kwargs)
        return str(self.kwargs["out_dir"])

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # Nothing to save here: the training loop checkpoints to work_dir itself; the requeued job
        # picks up the latest one.
        log.warning("round job interrupted (timeout/preemption): requeueing; it resumes from %s",
                    self.kwargs["work_dir"])
        return submitit.helpers.DelayedSubmission(RoundJob(self.kwargs))


def _task_environment():
    try:
        return submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (debug executor runs in-process)
        return None


def _init_from_submitit(env, world_size: int, cfg: dict) -> None:
    import torch
    import torch.distributed as dist

    from ranke.runtime import require_cuda, resolve_device

    if env.world_size != world_size:
        raise RuntimeError(f"train.world_size={world_size} but the job has {env.world_size} tasks")
    # nccl or gloo from the device the config resolves to, never from torch.cuda.is_available()
    # alone: a task of a `device: cuda` round on a node without a usable GPU fails here, naming why.
    device = resolve_device(cfg.get("device", "auto"))
    use_cuda = device.type == "cuda"
    if use_cuda:
        require_cuda(f"task {env.global_rank}/{env.world_size} needs cuda:{env.local_rank} (its local rank)",
                     index=env.local_rank)
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    log.info("rank %d/%d (local rank %d) joined the process group (%s)", env.global_rank, env.world_size,
             env.local_rank, "nccl" if use_cuda else "gloo")


def make_executor(cluster: dict, *, name: str, world_size: int = 1) -> submitit.Executor:
    kind = cluster.get("executor", "local")
    if kind not in ("local", "debug", "slurm"):
        raise ValueError(f"cluster.executor must be local | debug | slurm, got {kind!r}")
    folder = Path(cluster.get("folder") or "logs/submitit") / "%j"
    slurm = cluster.get("slurm") or {}
    if kind == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                   slurm_max_num_timeout=int(slurm.get("max_num_timeout", 3)))
        gpus = int(slurm.get("gpus_per_node") or 0)
        params = dict(
            name=name,
            timeout_min=int(slurm.get("timeout_min", 60)),
            mem_gb=float(slurm.get("mem_gb", 8)),
            cpus_per_task=int(slurm.get("cpus_per_task", 2)),
            tasks_per_node=world_size,
            slurm_setup=list(slurm.get("setup") or []),
        )
        if gpus:
            params["gpus_per_node"] = gpus
        if slurm.get("partition"):
            params["slurm_partition"] = slurm["partition"]
        if slurm.get("account"):
            params["slurm_account"] = slurm["account"]
        if slurm.get("qos"):
            params["slurm_qos"] = slurm["qos"]
        if slurm.get("constraint"):
            params["slurm_constraint"] = slurm["constraint"]
        if slurm.get("exclusive"):
            params["slurm_exclusive"] = True
        if slurm.get("additional_parameters"):
            params["slurm_additional_parameters"] = dict(slurm["additional_parameters"])
        ex.update_parameters(**params)
    else:
        ex = submitit.AutoExecutor(folder=folder, cluster=kind)
        ex.update_parameters(name=name, timeout_min=int(slurm.get("timeout_min", 60)))
    return ex


def submit_round(cfg: dict, *, method: str, round_idx: int, init_dir: str | None, tokens: str, work_dir: str,
                 out_dir: str, log_path: str, wait: bool = True):
    """Submit the round per cfg["cluster"]; with wait, block until it ends (raises if it failed).

    Unless the round's job record names a job that still runs: then that job is waited for
    instead (reattached), or, finished with success and its outputs there, returned at once.
    """
    cluster = cfg.get("cluster") or {"executor": "local"}
    world_size = int(cfg["train"].get("world_size", 1))
    kind = cluster.get("executor", "local")
    kwargs = dict(cfg=cfg, method=method, round_idx=round_idx, init_dir=init_dir, tokens_path=tokens,
                  work_dir=work_dir, out_dir=out_dir, log_path=log_path)
    inputs = inputs_fingerprint(kwargs)

    previous = previous_job(work_dir)
    if previous is not None:
        prev_id = previous.record["job_id"]
        if previous.alive:
            if previous.record.get("inputs") != inputs:
                raise RuntimeError(
                    f"round job {prev_id} ({previous.state}, {previous.record['executor']}) still runs on {work_dir} "
                    "but was submitted for other inputs (config, init or paths changed): wait for it to end or "
                    f"cancel it ({_cancel_hint(previous.record)}), then rerun")
            msg = (f"reattached to round job {prev_id} ({previous.state}, {previous.record['executor']}, submitted "
                   f"{previous.record.get('submitted_at')}, logs in {previous.record['folder']})")
            print(msg, flush=True)
            log.info(msg)
            return _finish(previous.job, previous.record["executor"], work_dir) if wait else previous.job
        why = f"previous round job {prev_id} is {previous.state}"
        if previous.outcome == "success" and previous.record.get("inputs") == inputs and _outputs_exist(
                out_dir, log_path):
            log.info("%s and its outputs exist (%s, %s): nothing to submit", why, out_dir, log_path)
            return previous.job
        if previous.outcome == "success":
            why += (", but it was submitted for other inputs" if previous.record.get("inputs") != inputs
                    else ", but its outputs are gone (removed as incomplete by Snakemake?)")
        log.info("%s: submitting a new one", why)
    else:
        log.info("no round job recorded in %s: submitting one", Path(work_dir) / JOB_RECORD)

    ex = make_executor(cluster, name=f"ranke-{method}-r{round_idx}", world_size=world_size if kind == "slurm" else 1)
    job_fn = RoundJob(kwargs)
    if kind == "debug":
        job = ex.submit(job_fn)
    else:
        with submitit.helpers.clean_env():
            job = ex.submit(job_fn)
        # at once: a driver killed from here on leaves a job a rerun must find (a debug job runs
        # inside this process, it cannot outlive it)
        write_job_record(work_dir, job_record(job, kind, inputs, method=method, round_idx=round_idx))
    msg = f"submitted round job {job.job_id} ({kind}, {method} round {round_idx}, logs in {cluster.get('folder')})"
    print(msg, flush=True)
    log.info(msg)
    if not wait:
        return job
    return _finish(job, kind, work_dir)


def _finish(job, kind: str, work_dir=None):
    """Wait for the job (scheduler state included, see _wait) and read its result; raise if it failed.

    A job that ended without a result (killed by a signal, out of memory, cancelled, timed out, its
    node lost) raises RoundJobDied naming how it ended, the likely cause and the checkpoint a
    rerun resumes from."""
    t0 = time.time()
    try:
        if kind != "debug":  # a debug job runs inside results()
            _wait(job)
            if not _has_results(job):
                raise RoundJobDied(f"round job {job.job_id} {how_it_ended(job)}; {resume_point(work_dir)}")
        job.results()  # every task's result: a multi-task job (one task per rank) has no single result()
    except Exception:
        log.error("round job %s failed after %.0fs", job.job_id, time.time() - t0)
        _log_tail(job)
        raise
    log.info("round job %s finished in %.0fs (job log: %s)", job.job_id, time.time() - t0,
             getattr(getattr(job, "paths", None), "stderr", "-"))
    return job


class RoundJobDied(RuntimeError):
    """The round job ended without a result; the message says how, why probably, and what next."""


# signal -> the likely cause, for a local job killed without a result
_SIGNAL_CAUSES = {
    "SIGKILL": "the kernel's out-of-memory killer (see `dmesg`), or a kill -9",
    "SIGTERM": "a kill, a logout or a shutdown",
    "SIGINT": "Ctrl-C",
    "SIGSEGV": "a crash in native code (a library or driver bug)",
    "SIGBUS": "a crash in native code or a full /dev/shm",
    "SIGABRT": "an abort in native code (a failed assertion in a library)",
}
# sacct state -> the likely cause and what to change
_SLURM_CAUSES = {
    "OUT_OF_MEMORY": "out of memory: raise cluster.slurm.mem_gb (or lower train.rollout.batch_size)",
    "CANCELLED": "cancelled (scancel, the administrator, or a dependency)",
    "TIMEOUT": "its time limit (cluster.slurm.timeout_min), after cluster.slurm.max_num_timeout requeues",
    "NODE_FAIL": "its node failed",
    "PREEMPTED": "preempted by a job of higher priority",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "its deadline passed",
    "FAILED": "a non-zero exit of the job script (the job log's last lines say why)",
}


def how_it_ended(job) -> str:
    """"was killed by SIGKILL ...; likely: ..." / "ended OUT_OF_MEMORY (exit 0:9); likely: ..."."""
    if isinstance(job, submitit.SlurmJob):
        state, exit_code = _sacct_state_and_exit(job)
        cause = _SLURM_CAUSES.get(state)
        text = f"ended {state}" + (f" (exit {exit_code})" if exit_code else "")
        sig = exit_code.split(":")[1] if exit_code and ":" in exit_code else "0"
        if not cause and sig not in ("", "0"):
            name = _signal_name(int(sig))
            cause = _SIGNAL_CAUSES.get(name, f"signal {name}")
        return text + (f"; likely: {cause}" if cause else "") + " without writing its result"
    process = getattr(job, "_process", None)
    code = process.poll() if process is not None else None
    if code is None:
        return f"is gone (process {job.job_id}, not a child of this driver: its exit status is unknown) without " \
               "writing its result"
    if code < 0:
        name = _signal_name(-code)
        return f"was killed by {name} without writing its result; likely: {_SIGNAL_CAUSES.get(name, 'a signal')}"
    return f"exited with code {code} without writing its result (the job log's last lines say why)"


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _sacct_state_and_exit(job) -> tuple[str, str]:
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", str(job.job_id)],
                             capture_output=True, text=True, timeout=60)
        rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
        if rows:
            return rows[-1][0].split()[0].upper(), rows[-1][1]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return slurm_state(job), ""


def resume_point(work_dir) -> str:
    """What a rerun of the same command resumes from (RESUME_INFO, written with RESUME_FILE)."""
    if work_dir is None:
        return "rerun the same command to resume"
    info_path = Path(work_dir) / RESUME_INFO
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return (f"no resume checkpoint in {work_dir}: rerunning the same command starts the round again from "
                "its first step")
    return (f"rerunning the same command resumes from {Path(work_dir) / RESUME_FILE} (global step "
            f"{info.get('global_step')}, {info.get('steps_done')} of {info.get('steps')} steps of this round done, "
            f"written {info.get('written_at')})")


def _outputs_exist(out_dir, log_path) -> bool:
    return (Path(out_dir) / "DONE").exists() and Path(log_path).exists()


def _cancel_hint(record: dict) -> str:
    if record["executor"] == "slurm":
        return f"scancel {record['job_id']}"
    return f"kill {record['job_id']} on {record.get('host')}"


# ------------------------------------------------------------------------------------------------
# The job record (work_dir/job.json) and the liveness of the job it names


def inputs_fingerprint(kwargs: dict) -> str:
    """What the round job computes: the config without `cluster` (where it runs does not change the
    result) and the round's arguments. A job submitted for other inputs is never adopted."""
    cfg = {k: v for k, v in kwargs["cfg"].items() if k != "cluster"}
    text = json.dumps(dict(kwargs, cfg=cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def job_record(job, kind: str, inputs: str, *, method: str, round_idx: int) -> dict:
    record = {
        "executor": kind,
        "job_id": str(job.job_id),
        "tasks": job.num_tasks,
        "folder": str(job.paths.folder),
        "submitted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": os.uname().nodename,
        "driver_pid": os.getpid(),
        "inputs": inputs,
        "method": method,
        "round": round_idx,
    }
    if kind == "local":
        # the job is named by its pid, which names another process once it has exited: keep what
        # tells this very process apart (it is our child and not yet reaped, so still the same one)
        record["process_start"] = process_start(int(job.job_id))
    return record


def write_job_record(work_dir, record: dict) -> None:
    """Atomically (temp file + rename): a rerun never reads half a record.

    Not ranke.io.write_json: importing ranke.io loads pandas and pyarrow, ~1 s of CPU for a driver
    that otherwise only waits.
    """
    path = Path(work_dir) / JOB_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_job_record(work_dir) -> dict | None:
    path = Path(work_dir) / JOB_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the unreadable job record %s: %s", path, e)
        return None
    if not isinstance(record, dict) or not {"executor", "job_id", "folder"} <= set(record):
        log.warning("ignoring the job record %s: it lacks executor, job_id or folder", path)
        return None
    return record


@dataclass
class PreviousJob:
    record: dict
    job: submitit.Job
    state: str  # scheduler state (SLURM), or RUNNING / COMPLETED / FAILED / INTERRUPTED / UNKNOWN (local)
    alive: bool  # still runs, or may run again (pending, requeued, suspended): never submit beside it
    outcome: str | None  # "success" / "error" from its result pickle(s); None without one


def previous_job(work_dir) -> PreviousJob | None:
    """The job the round's record names, attached through submitit, and whether it still runs.

    slurm: alive while sacct says a state in SLURM_ALIVE (pending, running, suspended, requeued,
      completing, ...); when sacct has no row for it (accounting lag, or accounting off), squeue
      decides; a job neither knows is UNKNOWN, not alive.
    local: the job is its controller process, named by its pid: alive only on the host that
      submitted it, while a process with that pid exists, is no zombie, and has the recorded start
      time (boot id + start ticks): pids are reused, start times are not.
    debug jobs are never recorded (they live in the driver's process).
    """
    record = read_job_record(work_dir)
    if record is None:
        return None
    kind, job_id, tasks = record["executor"], str(record["job_id"]), list(range(int(record.get("tasks", 1))))
    if kind == "slurm":
        job = submitit.SlurmJob(folder=record["folder"], job_id=job_id, tasks=tasks)
        state = slurm_state(job)
        alive = state in SLURM_ALIVE
    elif kind == "local":
        job = AdoptedLocalJob(record["folder"], job_id, tasks=tasks, start=record.get("process_start"))
        state = local_state(record, job)
        alive = state == "RUNNING"
    else:
        log.warning("job record %s names a %r job: ignored", Path(work_dir) / JOB_RECORD, kind)
        return None
    return PreviousJob(record, job, state, alive, result_outcome(job))


def slurm_state(job) -> str:
    """The job's state word ("CANCELLED by 0" -> CANCELLED): sacct, or squeue if sacct has no row.

    Asked directly, not through submitit's shared watcher: the watcher stops asking about a job
    it counts as done, SUSPENDED included, and would report that state for good.
    """
    job_id = str(job.job_id)
    for cmd in (["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],  # -X: the allocation, not its steps
                ["squeue", "-h", "-t", "all", "-o", "%T", "-j", job_id]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("%s about job %s failed: %s", cmd[0], job_id, e)
            continue
        lines = out.stdout.split("\n") if out.returncode == 0 else []
        words = [line.split() for line in lines if line.strip()]
        if words:
            return words[-1][0].upper()  # a requeued job's latest record comes last
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            log.warning("%s about job %s: exit %d: %s", cmd[0], job_id, out.returncode, out.stderr.strip()[-300:])
    return "UNKNOWN"


def process_start(pid: int) -> str | None:
    """'<boot id>:<start time in clock ticks>' of the live process `pid`; None when there is none,
    it is a zombie, or this system has no /proc (then a local job's liveness cannot be told)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces or ")"
    if fields[0] in ("Z", "X"):  # exited (not yet reaped): not running
        return None
    return f"{boot_id}:{fields[19]}"  # field 22 of proc(5), starttime


def local_state(record: dict, job) -> str:
    if record.get("host") != os.uname().nodename:
        log.warning("local round job %s was started on host %s: its process cannot be checked from %s",
                    record["job_id"], record.get("host"), os.uname().nodename)
        return "UNKNOWN"
    if job.get_info()["jobState"] == "RUNNING":
        return "RUNNING"
    return {"success": "COMPLETED", "error": "FAILED", None: "INTERRUPTED"}[result_outcome(job)]


def result_outcome(job) -> str | None:
    """"success" if every task's result pickle says so, "error" if one says that, None while one is missing."""
    outcomes = []
    for k in range(job.num_tasks):
        pickle = job.task(k).paths.result_pickle
        if not pickle.exists():
            return None
        try:
            outcomes.append(submitit.core.utils.pickle_load(pickle)[0])
        except Exception as e:  # truncated by a job killed while writing it
            log.warning("unreadable result %s: %s", pickle, e)
            return None
    return "success" if all(o == "success" for o in outcomes) else "error"


class AdoptedLocalJob(submitit.LocalJob):
    """A local job submitted by an earlier driver: not a child of this process, so submitit's
    LocalJob (which polls its Popen) cannot tell whether it runs; its pid and start time can."""

    def __init__(self, folder, job_id: str, tasks=(0,), start: str | None = None):
        super().__init__(folder, job_id, tasks=tasks)
        self._process_start = start  # process_start() of the job's process when it was submitted
        for sub in self._sub_jobs:
            sub._process_start = start

    def get_info(self, mode: str = "force") -> dict[str, str]:  # noqa: ARG002 (submitit's signature)
        # finished once it wrote its result (as core.Job.done), even if its process has not exited yet
        if self.paths.result_pickle.exists():
            return {"jobState": "FINISHED"}
        if self._process_start is not None and process_start(int(self.job_id)) == self._process_start:
            return {"jobState": "RUNNING"}
        return {"jobState": "INTERRUPTED"}


# How often the driver looks for the job's result file: a local job's is on this machine (a stat
# every 0.2 s costs nothing, and a demo round lasts seconds); a SLURM job's is on a shared file
# system, whose attribute cache is refreshed on every look (_has_results).
RESULT_POLL_S = {"local": 0.2, "slurm": 1.0}


def _wait(job, state_every_s: float = 10.0) -> None:
    """Until the job ends: its result file(s) every RESULT_POLL_S, its scheduler state every
    `state_every_s`; for a local job also until its process has exited.

    Not submitit's job.done(): it asks sacct about a running job only every min(60 s, half its
    age), so a round job that was cancelled or died without a result would be noticed up to a
    minute late; and it counts a SUSPENDED job as done (and never asks about it again), so the
    driver would give up on a job that resumes later. And not submitit's LocalJob.wait(), which
    checks the process once a second: after the result is written, that cost every demo round
    up to a second more.
    """
    local = isinstance(job, submitit.LocalJob)
    poll = RESULT_POLL_S["local" if local else "slurm"]
    process = getattr(job, "_process", None) if local else None
    last = time.monotonic()
    while not _has_results(job):
        time.sleep(poll)
        if process is not None and process.poll() is not None and not _has_results(job):
            return  # our child ended without a result: no need to wait for the next state check
        if time.monotonic() - last >= state_every_s:
            alive, state = job_alive(job)
            if not alive:
                if not _has_results(job):
                    log.warning("round job %s is %s and wrote no result", job.job_id, state)
                return
            last = time.monotonic()
    if process is not None:  # the result is written just before the job's process exits
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log.warning("round job %s wrote its result but its process has not exited after 60 s", job.job_id)


def _has_results(job) -> bool:
    try:  # as submitit does: refreshes a network file system's attribute cache of the folder
        job.paths.folder.chmod(job.paths.folder.stat().st_mode)
    except OSError:
        pass
    return all(job.task(k).paths.result_pickle.exists() for k in range(job.num_tasks))


def job_alive(job) -> tuple[bool, str]:
    """(still runs or may run again, state) from the scheduler (SLURM) or the process (local)."""
    if isinstance(job, submitit.SlurmJob):
        state = slurm_state(job)
        return state in SLURM_ALIVE, state
    if isinstance(job, submitit.LocalJob):  # its Popen, or for an AdoptedLocalJob its pid + start time
        state = job.get_info()["jobState"]
        return state == "RUNNING", state
    return not job.done(force_check=True), "?"


def _log_tail(job, n: int = 60) -> None:
    for what in ("stderr", "stdout"):
        try:
            text = getattr(job, what)() or ""
        except Exception:  # the file may not exist (job never started)
            continue
        tail = "\n".join(text.splitlines()[-n:])
        if tail:
            log.error("last lines of the job's %s (%s):\n%s", what, getattr(job.paths, what, "?"), tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranke round", description=__doc__.split("\n")[0])
    add_config_arguments(p, "seed, device, precision, image_size, backbone, assets, methods, rounds, train, cluster")
    p.add_argument("--method", required=True, help="the method (config methods[].name) this round trains")
    p.add_argument("--round", type=int, required=True, help="round number, 1-based")
    p.add_argument("--init", required=True, help="previous round's checkpoint directory, or 'base'")
    p.add_argument("--tokens", required=True, help="train split tokens.parquet")
    p.add_argument("--work", required=True, help="resume directory of this round (checkpoints while running)")
    p.add_argument("--out", required=True, help="checkpoint directory written at the end")
    p.add_argument("--log-parquet", required=True, help="train_log.parquet")
    p.add_argument("--log-file", default=None, help="also log to this file")
    a = p.parse_args(argv)
    setup_logging(a.log_file)
    cfg = config_from_args(a)
    if a.round < 1:
        p.error("--round must be >= 1 (round 0 is the base model)")
    init = None if a.init == "base" else a.init
    if init is not None and not (Path(init) / "DONE").exists():
        log.warning("init dir %s has no DONE marker", init)
    log.info("round driver: pid %d, SLURM_JOB_ID=%s", os.getpid(), os.environ.get("SLURM_JOB_ID"))
    try:
        submit_round(cfg, method=a.method, round_idx=a.round, init_dir=init, tokens=a.tokens, work_dir=a.work,
                     out_dir=a.out, log_path=a.log_parquet)
    except Exception as e:  # one clear line for the rule's log; the traceback is above / in the job log
        log.exception("round failed: %s", e)
        print(f"round failed: {e}", file=sys.stderr)
        return 1
    return 0
