"""Start the machine's PostgreSQL cluster (Debian ``postgresql``) for tests, and stop it
again if it was not running before."""

import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

ROLE, PASSWORD = "sapis_test", "sapis_test"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL
    )


def _psql(sql: str, port: int) -> None:
    _run(
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-p",
        str(port),
        "-v",
        "ON_ERROR_STOP=1",
        "-qc",
        sql,
    )


@dataclass
class PostgresServer:
    version: str
    cluster: str
    port: int
    started_here: bool

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"sapis_{uuid.uuid4().hex[:10]}"
        _psql(f"CREATE DATABASE {name} OWNER {ROLE}", self.port)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        _psql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)", self.port)

    def stop(self) -> None:
        if self.started_here:
            _run("pg_ctlcluster", self.version, self.cluster, "stop", check=False)


def start_postgres(timeout: float = 60) -> PostgresServer:
    """Start (or reuse) the first Debian PostgreSQL cluster and make a test role."""
    listing = _run("pg_lsclusters", "--no-header").stdout.split("\n")
    clusters = [line.split() for line in listing if line.strip()]
    if not clusters:
        version = re.search(r"\d+", _run("pg_config", "--version", check=False).stdout or "15")
        _run("pg_createcluster", version.group() if version else "15", "main")
        clusters = [
            line.split()
            for line in _run("pg_lsclusters", "--no-header").stdout.split("\n")
            if line.strip()
        ]
    version, cluster, port, status = clusters[0][:4]
    started_here = status != "online"
    if started_here:
        _run("pg_ctlcluster", version, cluster, "start")
    deadline = time.monotonic() + timeout
    while _run("pg_isready", "-h", "127.0.0.1", "-p", port, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL {version}/{cluster} did not accept connections")
        time.sleep(0.5)
    _psql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'; END IF; END $$",
        int(port),
    )
    return PostgresServer(version, cluster, int(port), started_here)


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of a test's own (its data folder, a free port), which the test
    may stop and start at will without disturbing the machine's cluster."""

    bin: str
    data: str
    port: int

    def url(self, database: str = "sapis") -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        _run("runuser", "-u", "postgres", "--", f"{self.bin}/pg_ctl", "-D", self.data, *args)

    def start(self) -> None:
        self._ctl("-w", "-l", f"{self.data}/server.log", "-o", f"-p {self.port} -k {self.data}",
                  "start")  # fmt: skip

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def remove(self) -> None:
        _run("runuser", "-u", "postgres", "--", f"{self.bin}/pg_ctl", "-D", self.data, "-m",
             "immediate", "stop", check=False)  # fmt: skip
        shutil.rmtree(self.data, ignore_errors=True)


def private_postgres() -> PrivatePostgres:
    """Initialise and start a private server (trust authentication on 127.0.0.1 only)
    with the test role and an empty database ``sapis``; call ``remove()`` when done."""
    version = re.search(r"\d+", _run("pg_config", "--version").stdout).group()
    bin_dir = f"/usr/lib/postgresql/{version}/bin"
    data = tempfile.mkdtemp(prefix="sapis-pg-")
    shutil.chown(data, "postgres", "postgres")
    _run("runuser", "-u", "postgres", "--", f"{bin_dir}/initdb", "-D", data, "-A", "trust",
         "-U", "postgres")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = PrivatePostgres(bin_dir, data, port)
    server.start()
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", data, "-p", str(port), "-qc"]
    _run(*psql, f"CREATE ROLE {ROLE} LOGIN CREATEDB")
    _run(*psql, f"CREATE DATABASE sapis OWNER {ROLE}")
    return server
