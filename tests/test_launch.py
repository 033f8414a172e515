"""`python -m ranke round`: submitit submission with the debug / local executors, requeue, SLURM env."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import submitit
import torch

from ranke.io import read_parquet
from ranke.train import launch
from ranke.train.launch import RoundJob, make_executor, submit_round

from test_round import make_world  # the tiny world (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
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


def test_local_executor_runs_in_a_subprocess(world, tmp_path, capsys, monkeypatch):
    root, cfg = world
    cfg = copy.deepcopy(cfg)
    cfg["cluster"] = {"executor": "local", "folder": str(tmp_path / "submitit"), "slurm": {"timeout_min": 5}}
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert launch.main(_argv(cfg, root, tmp_path, method="policy")) == 0
    out = capsys.readouterr().out
    job_id = out.split("submitted round job ")[1].split()[0]
    assert job_id.isdigit()  # local jobs are named by their pid
    assert (tmp_path / "ckpt" / "DONE").exists()


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


def test_slurm_parameters_and_clean_env(monkeypatch, tmp_path):
    cluster = {"executor": "slurm", "folder": str(tmp_path), "slurm": {
        "partition": "gpu", "account": "proj", "gpus_per_node": 2, "cpus_per_task": 4, "mem_gb": 16,
        "timeout_min": 30, "max_num_timeout": 5, "setup": ["source venv/bin/activate"]}}
    ex = make_executor(cluster, name="ranke-ranke-r1", world_size=2)
    params = ex._executor.parameters
    assert params["partition"] == "gpu" and params["account"] == "proj" and params["gpus_per_node"] == 2
    assert params["ntasks_per_node"] == 2 and params["time"] == 30 and params["mem"] == "16GB"
    assert params["setup"] == ["source venv/bin/activate"] and ex._executor.max_num_timeout == 5

    # inside a SLURM job (a Snakemake rule) the nested submission must not see SLURM_* variables
    seen = {}

    class FakeJob:
        job_id = "4242"

        def done(self, force_check=False):
            return True

        def result(self):
            return "ok"

    def fake_submit(self, fn, *args):
        seen["env"] = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SBATCH_"))}
        seen["fn"] = fn
        return FakeJob()

    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setenv("SBATCH_PARTITION", "x")
    monkeypatch.setattr(submitit.AutoExecutor, "submit", fake_submit)
    cfg = {"cluster": cluster, "train": {"world_size": 1}}
    job = submit_round(cfg, method="ranke", round_idx=1, init_dir=None, tokens="t", work_dir="w", out_dir="o",
                       log_path="l")
    assert job.job_id == "4242" and seen["env"] == {} and isinstance(seen["fn"], RoundJob)
    assert os.environ["SLURM_JOB_ID"] == "1"  # restored afterwards
    with pytest.raises(ValueError, match="cluster.executor"):
        make_executor({"executor": "k8s"}, name="x")


def test_wait_asks_the_scheduler_when_no_result_file_comes(monkeypatch):
    """A cancelled round job writes no result: the driver notices through the scheduler state."""
    from ranke.train import launch

    class CancelledJob:
        def __init__(self):
            self.calls = []

        def done(self, force_check=False):
            self.calls.append(force_check)
            return force_check  # only the scheduler knows it ended

    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(launch.time, "monotonic", lambda: float(next(clock)))
    job = CancelledJob()
    launch._wait(job, state_every_s=5)
    assert job.calls[-1] is True and job.calls.count(True) == 1
    assert 3 <= job.calls.count(False) <= 6  # result-file checks in between
