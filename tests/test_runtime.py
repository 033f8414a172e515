"""A GPU study never silently runs on CPU: `device: cuda` fails at once, naming why; the process group's
backend follows the resolved device; the environment log names the GPUs and the driver.

This machine has no GPU: where a test needs one, torch.cuda's answers are monkeypatched (nothing
that would touch a device is reached).
"""

from __future__ import annotations

import ctypes
import logging
import os
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ranke import runtime
from ranke.runtime import CudaUnavailableError, log_environment, nvidia_driver_version, resolve_device
from ranke.train import launch
from ranke.train import round as round_mod

from test_launch import fake_commands

HOST = os.uname().nodename
NO_DRIVER = "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"


@pytest.fixture
def no_cuda(monkeypatch):
    """A CUDA build of torch on a node without a usable GPU, torch.cuda's reason made explicit."""

    def init():
        raise RuntimeError(NO_DRIVER)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")


@pytest.fixture
def gpus(monkeypatch):
    """torch.cuda as on a node with `n` GPUs (only the queries; nothing may run on them)."""

    def make(n: int):
        props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, major=9, minor=0)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.version, "cuda", "12.4")

    return make


def _says_why(message: str, build: str = "12.4") -> None:
    assert f"host={HOST}" in message and "CUDA_VISIBLE_DEVICES=7" in message, message
    assert f"torch.version.cuda={build}" in message and NO_DRIVER in message, message


def test_cuda_without_a_usable_gpu_fails_naming_why(no_cuda, monkeypatch):
    with pytest.raises(CudaUnavailableError, match="config asks for device 'cuda' but no CUDA device is usable") as e:
        resolve_device("cuda")
    _says_why(str(e.value))
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(CudaUnavailableError) as e:
        resolve_device("cuda:0")
    _says_why(str(e.value), build="CPU-only build")


def test_cuda_index_beyond_the_visible_devices_fails(gpus):
    gpus(1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(CudaUnavailableError, match=r"'cuda:1' but 1 CUDA device\(s\) visible, 2 needed"):
        resolve_device("cuda:1")


def test_auto_runs_on_the_cpu_and_says_why(no_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="ranke"):
        assert resolve_device("auto") == torch.device("cpu")
    assert "device auto: no usable CUDA device, running on the CPU" in caplog.text and NO_DRIVER in caplog.text


def test_the_real_torch_here_agrees():
    """No mocks: this machine's torch either has a usable GPU or says why not."""
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(CudaUnavailableError, match=f"host={HOST}.*torch.version.cuda=.*reason="):
        resolve_device("cuda")


# ------------------------------------------------------------------------------------------------
# The round: the backend follows the resolved device; a CUDA round without GPUs spawns nothing


ROUND_ARGS = ("ranke", 1, None, "tokens.parquet")


def _round(cfg: dict, tmp_path) -> None:
    round_mod.run_round(cfg, *ROUND_ARGS, tmp_path / "work", tmp_path / "out", tmp_path / "log.parquet")


@pytest.fixture
def spawns(monkeypatch):
    """Calls of torch.multiprocessing.start_processes and of the single-rank path (nothing runs)."""
    calls = []
    monkeypatch.setattr(mp, "start_processes", lambda fn, args, nprocs, join, start_method: calls.append(
        {"fn": fn, "device_type": args[2], "nprocs": nprocs, "start_method": start_method}))
    monkeypatch.setattr(round_mod, "_run_rank", lambda *a: calls.append({"device": a[-1]}))
    return calls


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_cuda_round_without_gpus_fails_before_spawning(no_cuda, spawns, tmp_path, world_size):
    with pytest.raises(CudaUnavailableError) as e:
        _round({"device": "cuda", "train": {"world_size": world_size}}, tmp_path)
    _says_why(str(e.value))
    assert spawns == []


def test_a_round_needs_one_gpu_per_rank(gpus, spawns, tmp_path):
    gpus(1)
    with pytest.raises(CudaUnavailableError, match=r"train.world_size=2 .* 1 CUDA device\(s\) visible, 2 needed"):
        _round({"device": "auto", "train": {"world_size": 2}}, tmp_path)
    assert spawns == []


def test_ranks_run_where_the_device_resolves(gpus, spawns, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _round({"device": "auto", "train": {"world_size": 2}}, tmp_path)  # no GPU: CPU ranks, forked (gloo)
    gpus(2)
    _round({"device": "cpu", "train": {"world_size": 2}}, tmp_path)  # GPUs, but the config says cpu
    _round({"device": "auto", "train": {"world_size": 2}}, tmp_path)
    _round({"device": "cpu", "train": {"world_size": 1}}, tmp_path)
    assert [(c.get("device_type"), c.get("start_method")) for c in spawns[:3]] == [
        ("cpu", "fork"), ("cpu", "fork"), ("cuda", "spawn")]
    assert spawns[3] == {"device": torch.device("cpu")}


@pytest.fixture
def process_group(monkeypatch):
    """dist.init_process_group's backend per call (no group is made)."""
    backends = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
    return backends


def test_a_spawned_rank_without_its_gpu_fails_before_joining(no_cuda, process_group, monkeypatch):
    monkeypatch.setattr(round_mod, "_run_rank", lambda *a: pytest.fail("the rank must not run"))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(CudaUnavailableError, match="rank 1/2 of a CUDA round needs device cuda:1") as e:
            round_mod._spawned(1, 2, 12345, "cuda", ({"device": "cuda"},))
    finally:
        torch.set_num_threads(threads)
    _says_why(str(e.value))
    assert process_group == []


class _TaskEnv:
    world_size, global_rank, local_rank = 2, 1, 1


def test_submitit_tasks_pick_the_backend_from_the_device(gpus, no_cuda, process_group, monkeypatch):
    exported = []
    monkeypatch.setattr(launch.submitit.helpers.TorchDistributedEnvironment, "__init__", lambda self: None)
    monkeypatch.setattr(launch.submitit.helpers.TorchDistributedEnvironment, "export",
                        lambda self, **kw: exported.append(kw))
    with pytest.raises(CudaUnavailableError) as e:  # no GPU: fails, joins no gloo group
        launch._init_from_submitit(_TaskEnv(), 2, {"device": "cuda"})
    _says_why(str(e.value))
    assert process_group == [] and exported == []
    gpus(2)
    launch._init_from_submitit(_TaskEnv(), 2, {"device": "cpu"})
    launch._init_from_submitit(_TaskEnv(), 2, {"device": "auto"})
    assert process_group == ["gloo", "nccl"]
    gpus(1)  # local rank 1 needs a second GPU
    with pytest.raises(CudaUnavailableError, match=r"task 1/2 needs cuda:1 .* 1 CUDA device\(s\) visible, 2 needed"):
        launch._init_from_submitit(_TaskEnv(), 2, {"device": "cuda"})


# ------------------------------------------------------------------------------------------------
# The environment block of every stage's log


def test_log_environment_without_a_gpu_says_so(no_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="ranke"):
        log_environment({"stage": "x"})
    assert '"gpus": "no CUDA device"' in caplog.text and NO_DRIVER in caplog.text
    assert '"CUDA_VISIBLE_DEVICES": "7"' in caplog.text and '"stage": "x"' in caplog.text


def test_log_environment_names_the_gpus_and_the_driver(gpus, monkeypatch, caplog):
    gpus(2)
    monkeypatch.setattr(runtime, "nvidia_driver_version", lambda: "550.54.15")
    with caplog.at_level(logging.INFO, logger="ranke"):
        log_environment()
    text = caplog.text
    assert text.count("NVIDIA H100 80GB HBM3 (80 GiB, sm_90)") == 2 and '"count": 2' in text, text
    assert '"driver": "550.54.15"' in text and '"torch.version.cuda": "12.4"' in text, text


def test_driver_version_falls_back_to_nvidia_smi(tmp_path, monkeypatch):
    real_cdll = ctypes.CDLL

    def no_nvml(name, *a, **kw):
        if "nvidia-ml" in str(name):
            raise OSError(f"{name}: cannot open shared object file")
        return real_cdll(name, *a, **kw)

    monkeypatch.setattr(ctypes, "CDLL", no_nvml)
    fake_commands(monkeypatch, tmp_path / "bin", {"nvidia-smi": 'echo "550.54.15"; echo "550.54.15"\n'})
    assert nvidia_driver_version() == "550.54.15"
    monkeypatch.setenv("PATH", "/nonexistent")  # neither NVML nor nvidia-smi
    assert nvidia_driver_version() is None


def test_a_stage_reads_its_config_from_a_file_or_inline_json(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    runtime.add_config_arguments(parser)
    path = tmp_path / "sample-0123.json"
    path.write_text('{"sampling": {"seed": 3}}')
    assert runtime.config_from_args(parser.parse_args(["--config", str(path)])) == {"sampling": {"seed": 3}}
    assert runtime.config_from_args(parser.parse_args(["--config-json", '{"a": 1}'])) == {"a": 1}
    with pytest.raises(SystemExit):  # one or the other, not both, not neither
        parser.parse_args([])
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", str(path), "--config-json", "{}"])
    with pytest.raises(SystemExit, match="missing.json: cannot read it"):
        runtime.config_from_args(parser.parse_args(["--config", str(tmp_path / "missing.json")]))
    path.write_text("{not json")
    with pytest.raises(SystemExit, match="is not valid JSON"):
        runtime.config_from_args(parser.parse_args(["--config", str(path)]))
