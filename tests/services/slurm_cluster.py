"""Start and stop a throw-away one-node Slurm cluster for tests.

Everything Slurm writes (``slurm.conf``, state and spool directories, logs,
pid files) lives under a caller-supplied working directory; nothing is written
into ``/etc/slurm``.  The daemons run as root (``SlurmUser=root``), so this
module must be used as root, e.g. in a CI container after
``apt-get install slurm-wlm munge``.

Munge is shared with the system: if ``munge -n | unmunge`` already works the
running ``munged`` is used, otherwise one is started (and stopped again by
:meth:`SlurmCluster.stop`).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_DIRS = {
    Path("/etc/munge"): 0o700,
    Path("/var/lib/munge"): 0o711,
    Path("/var/log/munge"): 0o700,
    Path("/run/munge"): 0o755,
}
PARTITION = "debug"


@dataclass
class SlurmCluster:
    """Handle on a running test cluster; call :meth:`stop` when done."""

    conf: Path
    partition: str
    workdir: Path
    node: str
    slurmctld: subprocess.Popen[bytes]
    slurmd: subprocess.Popen[bytes]
    munged: subprocess.Popen[bytes] | None = None
    _prev_slurm_conf: str | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def env(self) -> dict[str, str]:
        """Return a copy of ``os.environ`` with ``SLURM_CONF`` pointing here."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def logs(self, lines: int = 40) -> str:
        """Return the tail of the daemon logs, for error messages."""
        return _log_tails(self.workdir, lines)

    def stop(self, timeout: float = 30) -> None:
        """Cancel all jobs, stop the daemons and restore ``SLURM_CONF``."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.slurmctld.poll() is None:
                _cancel_all_jobs(self.env(), timeout)
            for proc in (self.slurmd, self.slurmctld):
                _terminate(proc, timeout)
        finally:
            if self._prev_slurm_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = self._prev_slurm_conf
            if self.munged is not None:
                _terminate(self.munged, timeout)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_slurm(workdir: Path, timeout: float = 60) -> SlurmCluster:
    """Start munge (if needed), slurmctld and slurmd; wait for an idle node.

    ``SLURM_CONF`` is set in ``os.environ`` so that ``sbatch``/``squeue``/...
    and Parsl's ``SlurmProvider`` talk to this cluster.  Raises
    ``RuntimeError`` (with the daemon log tails) if the node does not become
    idle within ``timeout`` seconds.
    """
    if os.geteuid() != 0:
        raise RuntimeError("start_slurm() must run as root (SlurmUser=root)")
    for exe in ("slurmctld", "slurmd", "sinfo", "munge", "unmunge", "munged"):
        if shutil.which(exe, path=_sbin_path()) is None:
            raise RuntimeError(f"{exe} not found; apt-get install slurm-wlm munge")

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    munged = _ensure_munge(workdir, deadline)

    node = socket.gethostname().split(".")[0]
    conf = _write_config(workdir, node)
    prev = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    env = {**os.environ, "PATH": _sbin_path()}

    # -D: stay in the foreground so we own the processes; -c: discard any
    # state left in workdir by an earlier run.
    slurmctld = _spawn(["slurmctld", "-D", "-c", "-f", str(conf)], workdir, env)
    slurmd = _spawn(["slurmd", "-D", "-f", str(conf)], workdir, env)
    cluster = SlurmCluster(
        conf=conf,
        partition=PARTITION,
        workdir=workdir,
        node=node,
        slurmctld=slurmctld,
        slurmd=slurmd,
        munged=munged,
        _prev_slurm_conf=prev,
    )
    try:
        _wait_idle(cluster, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --------------------------------------------------------------------------
# munge


def _munge_ok() -> bool:
    """Return True if a credential can be created and decoded."""
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=True).stdout
        subprocess.run(["unmunge"], input=cred, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _ensure_munge(workdir: Path, deadline: float) -> subprocess.Popen[bytes] | None:
    """Make munge usable; return the ``munged`` process if we started one."""
    if _munge_ok():
        return None
    try:
        uid, gid = pwd.getpwnam("munge").pw_uid, grp.getgrnam("munge").gr_gid
    except KeyError:  # no munge user: run munged as root
        uid, gid = 0, 0
    for path, mode in MUNGE_DIRS.items():
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, gid)
        path.chmod(mode)
    if not MUNGE_KEY.exists():
        if shutil.which("mungekey", path=_sbin_path()):
            subprocess.run(
                ["mungekey", "--create", f"--keyfile={MUNGE_KEY}"],
                env={**os.environ, "PATH": _sbin_path()},
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
        else:
            MUNGE_KEY.write_bytes(os.urandom(1024))
    st = MUNGE_KEY.stat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(MUNGE_KEY, uid, gid)
    if st.st_mode & 0o077:
        MUNGE_KEY.chmod(0o600)  # munged refuses group/other-accessible keys

    # Run as the munge user (as the packaged service does); as root munged
    # rejects the munge-owned directories unless forced.
    as_root = uid == 0
    with open(workdir / "munged.out", "ab") as log:
        proc = subprocess.Popen(
            ["munged", "--foreground", *(["--force"] if as_root else [])],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PATH": _sbin_path()},
            start_new_session=True,
            user=None if as_root else uid,
            group=None if as_root else gid,
            extra_groups=None if as_root else [],
        )
    while time.monotonic() < deadline:
        if _munge_ok():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    _terminate(proc, 5)
    raise RuntimeError("munged did not start:\n" + _tail(workdir / "munged.out", 40))


# --------------------------------------------------------------------------
# slurm


def _sbin_path() -> str:
    """Return ``$PATH`` with the sbin directories (daemons) appended."""
    path = os.environ.get("PATH", os.defpath)
    extra = [d for d in ("/usr/sbin", "/sbin", "/usr/local/sbin") if d not in path]
    return os.pathsep.join([path, *extra])


def _slurmd(flag: str) -> str:
    """Output of ``slurmd FLAG`` (``-C`` hardware, ``-V`` version)."""
    return subprocess.run(
        ["slurmd", flag],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": _sbin_path()},
        stdin=subprocess.DEVNULL,
    ).stdout


def _hardware() -> str:
    """Describe this machine's CPUs and memory for the ``NodeName`` line."""
    try:
        out = _slurmd("-C")
    except (OSError, subprocess.SubprocessError):
        out = ""
    keys = (
        "CPUs",
        "Boards",
        "SocketsPerBoard",
        "CoresPerSocket",
        "ThreadsPerCore",
        "RealMemory",
    )
    found = dict(re.findall(r"(\w+)=(\S+)", out))
    if all(k in found for k in keys):
        return " ".join(f"{k}={found[k]}" for k in keys)
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"CPUs={os.cpu_count() or 1} RealMemory={mem_mb}"


def _slurm_version() -> tuple[int, int]:
    """Return (major, minor) of the installed Slurm, e.g. (22, 5)."""
    out = _slurmd("-V")
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _cgroup_conf(workdir: Path) -> str:
    """Return a ``cgroup.conf`` that keeps Slurm away from the host's cgroups.

    slurmd reads cgroup.conf and loads a cgroup plugin even with
    ``proctrack/linuxproc`` + ``task/none``.  ``autodetect`` would pick
    cgroup/v2 on modern hosts, which wants systemd/dbus or a writable cgroupfs
    (not available in containers).  Slurm >= 24.05 can disable cgroups; older
    versions get the v1 plugin, whose init() touches nothing, pointed at an
    empty directory so that nothing can ever use the real hierarchy.
    """
    if _slurm_version() >= (24, 5):
        return "CgroupPlugin=disabled\n"
    fake = workdir / "no-cgroup"
    fake.mkdir(exist_ok=True)
    return f"CgroupPlugin=cgroup/v1\nCgroupMountpoint={fake}\nCgroupAutomount=no\n"


def _free_port() -> int:
    """Return a TCP port that is currently unused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(workdir: Path, node: str) -> Path:
    """Write ``slurm.conf`` and ``cgroup.conf`` into ``workdir``.

    ``MinJobAge`` keeps Slurm's default of 300 s: without accounting, Parsl learns that
    a job ended (cancelled, say) only from ``squeue --job``, which stops knowing the job
    once it is purged; Parsl polls every 60 s."""
    for sub in ("state", "spool"):
        path = workdir / sub
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
    conf = workdir / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=pytest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
EnforcePartLimits=ALL
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
MailProg=/bin/true
StateSaveLocation={workdir / "state"}
SlurmdSpoolDir={workdir / "spool"}
SlurmctldPidFile={workdir / "slurmctld.pid"}
SlurmdPidFile={workdir / "slurmd.pid"}
SlurmctldLogFile={workdir / "slurmctld.log"}
SlurmdLogFile={workdir / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={workdir / "plugstack.conf"}
NodeName={node} NodeAddr=127.0.0.1 {_hardware()} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    (workdir / "cgroup.conf").write_text(_cgroup_conf(workdir))
    (workdir / "plugstack.conf").write_text("")
    return conf


def _spawn(cmd: list[str], workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a daemon in the foreground, output appended to ``<name>.out``."""
    with open(workdir / f"{cmd[0]}.out", "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_idle(cluster: SlurmCluster, deadline: float) -> None:
    """Poll ``sinfo`` until the node is idle, or raise RuntimeError."""
    state = "<no answer>"
    while time.monotonic() < deadline:
        for proc in (cluster.slurmctld, cluster.slurmd):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args[0]} exited with {proc.returncode}\n" + cluster.logs()
                )
        try:
            res = subprocess.run(
                ["sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t"],
                capture_output=True,
                text=True,
                timeout=10,
                env=cluster.env(),
                stdin=subprocess.DEVNULL,
            )
            state = (res.stdout or res.stderr).strip() or state
        except subprocess.TimeoutExpired:
            pass
        if state == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"Slurm node {cluster.node} not idle after timeout (state: {state})\n" + cluster.logs()
    )


def _cancel_all_jobs(env: dict[str, str], timeout: float) -> None:
    """scancel every job and wait (bounded) until squeue shows none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            res = subprocess.run(
                ["squeue", "-h", "-o", "%i"],
                capture_output=True,
                text=True,
                timeout=10,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return
        jobs = res.stdout.split()
        if res.returncode != 0 or not jobs:
            return
        subprocess.run(
            ["scancel", *jobs],
            capture_output=True,
            timeout=10,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(0.5)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM a process we started, SIGKILL it if it lingers, reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)


def _tail(path: Path, lines: int) -> str:
    """Return the last ``lines`` lines of ``path`` (or a note if missing)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} missing)"
    return "\n".join(text[-lines:])


def _log_tails(workdir: Path, lines: int) -> str:
    """Concatenate the tails of all daemon logs under ``workdir``."""
    parts = []
    for daemon in ("slurmctld", "slurmd", "munged"):
        # <daemon>.log is Slurm's own log file; <daemon>.out (stdout/stderr)
        # matters when the daemon died before it could open the log file.
        for path in (workdir / f"{daemon}.log", workdir / f"{daemon}.out"):
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {path} ---\n{_tail(path, lines)}")
                break
    return "\n".join(parts)
