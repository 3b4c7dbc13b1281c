"""The Prefect server a command starts for itself when ``PREFECT_API_URL`` names none.

``prefect server start`` (API, UI and services) in a subprocess on 127.0.0.1 unless told
otherwise, on a free port, with the user's ``PREFECT_HOME`` (so its database: SQLite
there, or the PostgreSQL of ``PREFECT_API_DATABASE_CONNECTION_URL``); waited for with a
health check, used through ``PREFECT_API_URL`` by this process and its children, and
stopped on exit. A SIGKILLed command leaves it to the watchdog of
:mod:`sapis.processes`, which the command line starts.

Prefect's own temporary server (``SubprocessASGIServer``) is not reused: it always
binds 127.0.0.1, serves no UI and runs only the services of an ephemeral server (no
scheduler, so a ``--cron`` deployment would never run).
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sapis.errors import InputError

LOCALHOST = "127.0.0.1"
_WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class PrefectServer:
    """A Prefect server: ``url`` where this machine reaches it, ``ui_url`` where a
    browser does, whether this process started it."""

    url: str
    ui_url: str
    started: bool

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def healthy(api_url: str) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _url(name: str, port: int) -> str:
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def _public_url(host: str, port: int) -> str:
    """How a browser reaches a server bound to ``host``: a wildcard address by this
    machine's name."""
    return _url(socket.getfqdn() if host in _WILDCARDS else host, port)


def _local_url(host: str, port: int) -> str:
    """How this machine reaches a server bound to ``host``."""
    return _url(LOCALHOST if host in _WILDCARDS else host, port)


def _launch(host: str, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port)}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # where the UI, in the browser, finds the API (Prefect's default ignores --port)
    env.setdefault("PREFECT_UI_API_URL", f"{_public_url(host, port)}/api")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host]
    cmd += ["--port", str(port), "--log-level", "WARNING"]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def stop_server(process: subprocess.Popen, grace: float = 15.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _last_line(log: Path) -> str:
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1] if lines else "no output"


def start_server(
    host: str = LOCALHOST, port: int = 0, log: Path | None = None, timeout: float = 180.0
) -> tuple[subprocess.Popen, int]:
    """Start ``prefect server start`` on ``host``:``port`` (0: a free port) writing to
    ``log``; returns the process and its port once its API answers. Raises
    :class:`InputError` naming the log's last line if it does not start in ``timeout``
    seconds."""
    log = log or Path(os.devnull)
    for attempt in range(3):  # a free port may be taken before the server binds it
        try:
            chosen = port or free_port(LOCALHOST if host in _WILDCARDS else host)
        except OSError as err:
            raise InputError(f"cannot listen on {host!r}: {err}") from None
        process = _launch(host, chosen, log)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if healthy(f"{_local_url(host, chosen)}/api"):
                return process, chosen
            time.sleep(0.5)
        if process.poll() is None:
            stop_server(process)
            raise InputError(f"the Prefect server did not answer within {timeout:.0f} s ({log})")
        if port or attempt == 2 or "already in use" not in log.read_text(errors="replace"):
            raise InputError(f"the Prefect server did not start: {_last_line(log)} ({log})")
    raise AssertionError("unreachable")


def _use_api(url: str | None) -> None:
    """Point this process (and the children it starts) at ``url`` (None: at nothing)."""
    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:  # Prefect read its settings when imported
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


@contextlib.contextmanager
def prefect_server(
    host: str = LOCALHOST, port: int = 0, log: Path | None = None, timeout: float = 180.0
) -> Iterator[PrefectServer]:
    """The server ``PREFECT_API_URL`` names, or, when it names none, one started here
    (see :func:`start_server`) for as long as the context lasts, with
    ``PREFECT_API_URL`` pointing at it meanwhile."""
    given = os.environ.get("PREFECT_API_URL")
    if given:
        url = given.rstrip("/").removesuffix("/api")
        yield PrefectServer(url, url, started=False)
        return
    process, port = start_server(host, port, log, timeout)
    try:
        server = PrefectServer(_local_url(host, port), _public_url(host, port), started=True)
        _use_api(server.api_url)
        yield server
    finally:
        _drain_to_api()
        _use_api(None)
        stop_server(process)


def _drain_to_api(timeout: float = 10.0) -> None:
    """Send the logs and events Prefect still holds while its server is up (at exit
    Prefect would retry them against a stopped server for over a minute)."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)
