"""A real single-node SLURM cluster for the tests (pytest fixture around ci/slurm/slurm-ci.sh).

`slurm_cluster` (session scope) installs the Debian packages if needed, starts munge, MariaDB,
slurmdbd, slurmctld and slurmd on loopback, yields a `SlurmCluster`, and stops every daemon by
its recorded PID at the end of the session, also when tests fail or pytest gets SIGTERM.

It skips (with the reason) only where SLURM cannot be installed: not root, no apt-get, or the
package install fails. Set RANKE_REQUIRE_SLURM=1 to make that a failure instead (for a CI job
whose point is the cluster test). A cluster that is installed but does not start is an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "ci" / "slurm" / "slurm-ci.sh"
VENV_BIN = Path(sys.executable).parent
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
# what the cluster and the tests run; sbin included, since root's PATH may lack it
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "munged", "srun", "sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol"]
BINARY_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
LOCK_FILE = Path(os.environ.get("RANKE_SLURM_LOCK", "/run/lock/ranke-slurm-ci.lock"))
LOCK_WAIT_S = float(os.environ.get("RANKE_SLURM_LOCK_WAIT", "900"))

# sacct states that mean a job will not change any more
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE",
}


def _skip_or_fail(reason: str):
    if os.environ.get("RANKE_REQUIRE_SLURM") == "1":
        pytest.fail(f"RANKE_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _harness(command: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Advertise at least 16 CPUs (oversubscribing a 2-core runner): every stage asks for 2 CPUs,
    # the demo-world job group for 4, and after it baseline, quality, the FID reference and three
    # round jobs (12 CPUs) are ready at once, with a cancelled job still holding its CPUs while it
    # completes. Queued jobs start late and miss a status check; side by side they share the cores.
    env.setdefault("RANKE_SLURM_CPUS", str(max(16, os.cpu_count() or 1)))
    return subprocess.run(
        ["bash", str(HARNESS), command],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _packages_installed() -> bool:
    if not shutil.which("dpkg"):
        return False
    return subprocess.run(["dpkg", "-s", *PACKAGES], capture_output=True).returncode == 0


def unusable_binaries() -> list[str]:
    """The cluster's commands that are not executable files (a package whose binaries were removed
    or hidden, e.g. bind-mounted over by /dev/null to mimic a machine that never had SLURM)."""
    return [name for name in BINARIES if shutil.which(name, path=BINARY_PATH) is None]


def ensure_slurm_installed() -> None:
    """Install the packages (idempotent) or skip the calling test with the reason."""
    if os.geteuid() != 0:
        _skip_or_fail("SLURM tests need root: they install SLURM and start its daemons (ci/slurm/slurm-ci.sh)")
    if not _packages_installed():
        if not shutil.which("apt-get"):
            _skip_or_fail(f"SLURM is not installed and apt-get is unavailable to install it ({' '.join(PACKAGES)})")
        proc = _harness("install", timeout=900)
        if proc.returncode != 0:
            _skip_or_fail(f"SLURM could not be installed with apt-get:\n{proc.stderr[-2000:]}")
    # dpkg's record is not the files: apt-get cannot restore binaries it believes are installed
    missing = unusable_binaries()
    if missing:
        _skip_or_fail(f"SLURM packages are recorded as installed but these commands are not executable: {', '.join(missing)}")


@dataclass
class SlurmCluster:
    """Handle on the running cluster: thin wrappers over the SLURM client commands."""

    state_dir: Path
    startup_s: float

    def sacct(self, job_ids: list[str] | None = None) -> dict[str, dict[str, str]]:
        """{job_id: {State, ExitCode, JobName, Comment}} for allocations (not steps)."""
        cmd = ["sacct", "-X", "-n", "-P", "-S", "2000-01-01", "-o", "JobID,State,ExitCode,JobName,Comment%400"]
        if job_ids:
            cmd += ["-j", ",".join(job_ids)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
        rows = {}
        for line in out.splitlines():
            job_id, state, exit_code, name, comment = line.split("|", 4)
            # "CANCELLED by 0" -> CANCELLED
            rows[job_id] = {"State": state.split()[0], "ExitCode": exit_code, "JobName": name, "Comment": comment}
        return rows

    def wait_final(self, job_ids: list[str], timeout: float = 60) -> dict[str, dict[str, str]]:
        """sacct rows of `job_ids` once every one is in a final state (accounting lags a little)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.sacct(job_ids)
            if all(j in rows and rows[j]["State"] in FINAL_STATES for j in job_ids):
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not final in sacct after {timeout} s: {rows}")
            time.sleep(0.5)

    def squeue(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()

    def logs(self, tail: int = 40) -> str:
        """The last lines of every daemon log, for a failing test's message."""
        parts = []
        for path in sorted((self.state_dir / "log").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"==> {path} <==\n" + "\n".join(lines))
        return "\n".join(parts)


@contextlib.contextmanager
def _exclusive_lock():
    """One cluster per machine: a second test session waits for the first one's cluster to go."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as fh:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session holds the SLURM cluster lock {LOCK_FILE} for > {LOCK_WAIT_S} s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _terminate_gracefully():
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so that fixture teardown (slurm down) still runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class BoundedRun:
    """`timeout -k KILL_AFTER TIMEOUT cmd...` started in its own process group, output to a file.

    Snakemake only asks itself to stop on SIGTERM (it waits for running jobs), hence `timeout -k`.
    stop() signals the whole group (TERM, then KILL), so that no snakemake outlives a failed or
    interrupted test.
    """

    def __init__(self, cmd: list[str], *, timeout: float, cwd: Path, env: dict[str, str], log: Path,
                 kill_after: float = 20):
        self.cmd = ["timeout", "-k", str(int(kill_after)), str(int(timeout)), *cmd]
        self.log = Path(log)
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return subprocess.CompletedProcess(self.cmd, self.proc.returncode, self.log.read_text(errors="replace"), "")

    def stop(self, grace: float = 10) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                return
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue


def run_bounded(cmd: list[str], *, timeout: float, cwd: Path, env: dict[str, str], log: Path | None = None,
                kill_after: float = 20) -> subprocess.CompletedProcess:
    """Run a command under BoundedRun and wait for it; stdout holds stdout + stderr."""
    if log is None:
        log = Path(cwd) / f".bounded-{os.getpid()}-{time.monotonic_ns()}.log"
    return BoundedRun(cmd, timeout=timeout, cwd=cwd, env=env, log=log, kill_after=kill_after).wait()


def slurm_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for commands that submit jobs: the venv first on PATH, the repo importable.

    Jobs inherit it (sbatch --export=ALL), so `python -m ranke` works inside them without an
    installed package.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def slurm_cluster():
    ensure_slurm_installed()
    state_dir = Path(os.environ.get("RANKE_SLURM_STATE", "/var/spool/ranke-slurm-ci"))
    with _exclusive_lock(), _terminate_gracefully():
        try:
            t0 = time.monotonic()
            proc = _harness("up", timeout=180)
            startup = time.monotonic() - t0
            if proc.returncode != 0:
                pytest.fail(f"the SLURM cluster did not start:\n{proc.stderr[-4000:]}", pytrace=False)
            yield SlurmCluster(state_dir=state_dir, startup_s=startup)
        finally:
            down = _harness("down", timeout=120)
            sys.stderr.write(down.stderr)
