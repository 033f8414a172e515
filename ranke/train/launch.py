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
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import submitit

from ranke.runtime import log_environment, parse_config_json, setup_logging

log = logging.getLogger("ranke.train.launch")


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

    if env.world_size != world_size:
        raise RuntimeError(f"train.world_size={world_size} but the job has {env.world_size} tasks")
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    use_cuda = torch.cuda.is_available() and cfg.get("device", "auto") != "cpu"
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    log.info("rank %d/%d (local rank %d) joined the process group", env.global_rank, env.world_size,
             env.local_rank)


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
        ex.update_parameters(**params)
    else:
        ex = submitit.AutoExecutor(folder=folder, cluster=kind)
        ex.update_parameters(name=name, timeout_min=int(slurm.get("timeout_min", 60)))
    return ex


def submit_round(cfg: dict, *, method: str, round_idx: int, init_dir: str | None, tokens: str, work_dir: str,
                 out_dir: str, log_path: str, wait: bool = True):
    """Submit the round per cfg["cluster"]; with wait, block until it ends (raises if it failed)."""
    cluster = cfg.get("cluster") or {"executor": "local"}
    world_size = int(cfg["train"].get("world_size", 1))
    kind = cluster.get("executor", "local")
    ex = make_executor(cluster, name=f"ranke-{method}-r{round_idx}", world_size=world_size if kind == "slurm" else 1)
    job_fn = RoundJob(dict(cfg=cfg, method=method, round_idx=round_idx, init_dir=init_dir, tokens_path=tokens,
                           work_dir=work_dir, out_dir=out_dir, log_path=log_path))
    if kind == "debug":
        job = ex.submit(job_fn)
    else:
        with submitit.helpers.clean_env():
            job = ex.submit(job_fn)
    msg = f"submitted round job {job.job_id} ({kind}, {method} round {round_idx}, logs in {cluster.get('folder')})"
    print(msg, flush=True)
    log.info(msg)
    if not wait:
        return job
    t0 = time.time()
    try:
        if kind != "debug":  # a debug job runs inside result()
            _wait(job)
        job.result()
    except Exception:
        log.error("round job %s failed after %.0fs", job.job_id, time.time() - t0)
        _log_tail(job)
        raise
    log.info("round job %s finished in %.0fs (job log: %s)", job.job_id, time.time() - t0,
             getattr(getattr(job, "paths", None), "stderr", "-"))
    return job


def _wait(job, state_every_s: float = 10.0) -> None:
    """Until the job ends: its result file every second, its scheduler state every `state_every_s`.

    submitit's own wait asks sacct about a running job only every min(60 s, half its age), so a
    round job that was cancelled or died without a result would be noticed up to a minute late.
    """
    last = time.monotonic()
    while not job.done():
        time.sleep(1)
        if time.monotonic() - last >= state_every_s:
            if job.done(force_check=True):
                return
            last = time.monotonic()


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
    p.add_argument("--config-json", required=True,
                   help="JSON with: seed, device, precision, image_size, backbone, assets, methods, rounds, train, cluster")
    p.add_argument("--method", required=True)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--init", required=True, help="previous round's checkpoint directory, or 'base'")
    p.add_argument("--tokens", required=True, help="train split tokens.parquet")
    p.add_argument("--work", required=True, help="resume directory of this round (checkpoints while running)")
    p.add_argument("--out", required=True, help="checkpoint directory written at the end")
    p.add_argument("--log-parquet", required=True, help="train_log.parquet")
    p.add_argument("--log-file", default=None)
    a = p.parse_args(argv)
    setup_logging(a.log_file)
    cfg = parse_config_json(a.config_json)
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
