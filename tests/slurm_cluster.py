"""A single-node SLURM cluster on this machine, for tests (`pytest -m slurm`).

Debian's slurm-wlm and munge, run as root: munged, slurmctld and slurmd in the foreground as
child processes of the test, with a one-node slurm.conf generated for this machine (cons_tres,
its CPUs and memory as `slurmd -C` detects them, no job accounting). Everything lives in a
temporary folder (munged's own key and socket, the daemons' state, spool, pid and log files)
except slurm.conf itself, which must be at /etc/slurm/slurm.conf: the executor plugin clears
SLURM_CONF from the environment of the `srun` inside each job, so only the default path is
found there. The file is written only where there is none (a machine with a SLURM of its own
is left alone) and removed again by `stop()`.

    with SlurmCluster(tmp_path) as cluster:
        cluster.run("sbatch", "--wrap", "true")
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# a one-node test cluster of trmrl-bench (tests/slurm_cluster.py); removed after the test"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "srun")
INSTALL_HINT = ("apt-get install -y slurm-wlm munge (Debian/Ubuntu) and "
                "pip install -e '.[slurm]'")


def unavailable_reason() -> str | None:
    """Why a test cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "the SLURM test starts munged, slurmctld and slurmd and needs root"
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        missing.append("snakemake-executor-plugin-slurm")
    if missing:
        return f"missing {', '.join(missing)}: {INSTALL_HINT}"
    if SLURM_CONF.exists() and MARK not in SLURM_CONF.read_text(errors="replace"):
        return f"{SLURM_CONF} exists: this machine has a SLURM of its own, left alone"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detected_node() -> str:
    """`slurmd -C`'s NodeName=... line: this machine's CPUs, sockets, cores and memory."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


class SlurmCluster:
    """munged + slurmctld + slurmd on this machine; a context manager that stops them."""

    partition = "ci"

    def __init__(self, root: Path, min_job_age: int = 600):
        self.root = Path(root)
        self.min_job_age = min_job_age
        self.processes: dict[str, subprocess.Popen] = {}

    # -----------------------------------------------------------------------------------
    def config_text(self) -> str:
        munge = self.root / "munge"
        # MinJobAge: finished jobs stay visible to squeue this long; without accounting that
        # is how the executor plugin learns that a job ended (profiles/slurm/config.yaml)
        return f"""{MARK}
ClusterName=trmrl-ci
SlurmctldHost={socket.gethostname()}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge / 'munge.socket'}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={self.min_job_age}
KillWait=30
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
{detected_node()}
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        for name in ("state", "spool", "log", "munge"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        munge, log = self.root / "munge", self.root / "log"
        munge.chmod(0o700)  # munged refuses a key or socket folder others can write to
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(self.config_text())
        self._spawn("munged", ["munged", "--foreground", "--force",
                               f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
                               f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}",
                               f"--log-file={log / 'munged.log'}"])
        self._wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket")
        # -i: ignore any saved state, so that a test starts on an empty queue
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D"])
        self._wait_for(self._node_ready, "the node to become idle")

    def stop(self) -> None:
        """Stop the daemons this object started (last first; SIGKILL after 30 s) and remove
        the slurm.conf it wrote."""
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if SLURM_CONF.exists() and MARK in SLURM_CONF.read_text(errors="replace"):
            SLURM_CONF.unlink()

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -----------------------------------------------------------------------------------
    def run(self, *command: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; its stdout."""
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result.stdout

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still knows (finished ones for MinJobAge seconds):
        {job id: {"state": ..., "comment": ..., "name": ...}}."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%T|%k|%j")
        jobs = {}
        for line in out.splitlines():
            job_id, state, comment, name = line.split("|", 3)
            jobs[job_id] = {"state": state, "comment": comment, "name": name}
        return jobs

    def logs(self) -> str:
        """The tails of the daemons' logs, for assertion messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-30:]
            parts.append(f"==> {path.name} <==\n" + "\n".join(lines))
        return "\n".join(parts)

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "w") as output:
            self.processes[name] = subprocess.Popen(command, stdout=output,
                                                    stderr=subprocess.STDOUT)

    def _node_ready(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}:\n"
                                   + self.logs())
        result = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True,
                                text=True)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def _wait_for(self, condition, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n"
                           + self.logs())
