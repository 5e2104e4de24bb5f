"""A real one-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd
(Debian's `munge` and `slurm-wlm`), each started in the foreground with its own state,
spool, socket and log files in a temporary folder, on free ports.

The node is this host (its hostname, address 127.0.0.1) with its CPU count; jobs run as
the calling user (the daemons run as that user too: SlurmUser = SlurmdUser = it), with
``proctrack/linuxproc`` and ``task/none`` (no cgroups) and ``select/linear`` (a job gets
whole nodes). Clients (sbatch, squeue, scontrol, scancel) find it through the
``SLURM_CONF`` variable of :attr:`SlurmCluster.env`. There is no accounting database
(slurmdbd): ``sacct`` has nothing to say, so a job's end is read from ``scontrol``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")


def unavailable_reason() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"Slurm or munge is not installed (missing {', '.join(missing)}); "
                "`apt-get install -y slurm-wlm munge` (as .ci/run does)")
    if os.geteuid() != 0:
        return "the test cluster's slurmd must run as root (it starts jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "spool", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        user = getpass.getuser()
        self.conf.write_text("\n".join([
            "ClusterName=samitest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/linear",
            "SchedulerType=sched/builtin",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobRequeue=1",
            "MinJobAge=600",  # finished jobs stay visible to scontrol for 10 minutes
            "SchedulerParameters=sched_interval=1",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=2",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout: float = 60.0) -> None:
        self._write_conf()
        m = self.root / "munge"
        key = m / "munge.key"
        subprocess.run([_bin("mungekey"), "--create", "--keyfile", str(key), "--force"], check=True,
                       capture_output=True)
        os.chmod(key, 0o400)
        self._spawn([_bin("munged"), "--foreground", "--force", f"--socket={m / 'munge.socket'}",
                     f"--key-file={key}", f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                     f"--seed-file={m / 'munged.seed'}"], "munged")
        self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged's socket")
        self._spawn([_bin("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._spawn([_bin("slurmd"), "-D", "-f", str(self.conf)], "slurmd")
        self._wait(self._node_idle, timeout, "the node to be idle")

    def _spawn(self, cmd: list[str], name: str) -> None:
        out = open(self.root / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))

    def _node_idle(self) -> bool:
        p = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return p.returncode == 0 and p.stdout.strip().startswith("idle")

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        raise RuntimeError(f"test Slurm cluster: no {what} within {timeout:g} s\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        files = sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")) + [self.root / "munge" / "munged.log"]
        for f in files:
            if f.exists():
                parts.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", getpass.getuser()], env=self.env, capture_output=True)
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def run(self, *cmd: str) -> str:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=True).stdout
