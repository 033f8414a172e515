"""`python -m ranke unlock`: a killed snakemake's lock is removed, a running one's is not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ranke import unlock


def _started(argv, **kwargs) -> subprocess.Popen:
    """Popen, then wait until the kernel shows the new program's command line (for a moment after
    Popen returns, /proc/<pid>/cmdline is empty while the exec completes)."""
    proc = subprocess.Popen(argv, **kwargs)
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def _locked(directory):
    locks = directory / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    for name in ("0.input.lock", "0.output.lock"):
        (locks / name).write_text(str(directory))
    return locks


def test_a_stale_lock_is_removed(tmp_path):
    locks = _locked(tmp_path / "work")
    assert unlock.main([str(tmp_path / "work")]) == 0
    assert not list(locks.iterdir())
    assert unlock.unlock(tmp_path / "work") == []  # nothing left to do


def test_a_lock_of_a_running_snakemake_is_kept_and_named(tmp_path, capsys):
    work = tmp_path / "work"
    locks = _locked(work)
    fake = tmp_path / "bin" / "snakemake"  # a process whose command is `.../snakemake`, working in `work`
    fake.parent.mkdir()
    # (a Python script: a shell script's `sleep` child would briefly be a second "snakemake")
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(0o755)
    proc = _started([str(fake), "--cores", "1"], cwd=work)
    try:
        assert unlock.main([str(work)]) == 1
        assert f"pid {proc.pid}" in capsys.readouterr().err
        assert len(list(locks.iterdir())) == 2
        # working in another directory through --directory counts too
        other = tmp_path / "elsewhere"
        _locked(other)
        proc2 = _started([str(fake), "--directory", str(other)], cwd=tmp_path)
        try:
            assert [pid for pid, _ in unlock.snakemake_processes(other)] == [proc2.pid]
        finally:
            proc2.kill()
    finally:
        proc.kill()
        proc.wait()
