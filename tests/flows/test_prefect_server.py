"""The Prefect server a command starts (sapis.flows.server): on 127.0.0.1 unless told
otherwise, stopped when the command ends, even by SIGKILL or SIGTERM; on PostgreSQL and
behind basic authentication as a cluster install would run it."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from process_tree import MARK, Tree, run_and_kill
from test_campaign_flows import write_config

from sapis.store import DatasetStore

VENV_BIN = Path(sys.executable).parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return env


def _listening(port: int) -> set[str]:
    """The addresses something listens on at TCP ``port``."""
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _api(url: str, path: str, body: dict | None = None, auth: str | None = None):
    """(status, decoded JSON) of a request to the Prefect API at ``url``."""
    request = urllib.request.Request(
        f"{url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_campaign_leaves_no_prefect_server(tmp_path, sig):
    config = write_config(tmp_path, stop={"max_rounds": 0})
    db = tmp_path / "campaign" / "data.db"

    def ready(tree):  # inside the flow: its server up, the first labels stored
        if not (tree.has("prefect", "server", "start") and db.exists()):
            return False
        try:
            return DatasetStore(db).count(status="labelled") > 0
        except Exception:  # the database is still being created
            return False

    log = tmp_path / "stderr.txt"
    cmd = [VENV_BIN / "sapis", "campaign", str(config)]
    code, tree, left = run_and_kill(cmd, _env(tmp_path), ready, sig, log)
    assert tree.has("sapis.processes")
    assert not left, f"still running after {sig.name}: {left}"
    if sig == signal.SIGTERM:  # the flow run unwound, the server was stopped
        err = log.read_text()
        assert code == 143 and "stopped by SIGTERM" in err, err[-3000:]


def _first_line(path: Path, start: str, proc: subprocess.Popen, seconds: float = 600) -> str:
    """The first line of ``path`` starting with ``start``, once ``proc`` has written it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        lines = [x for x in path.read_text().splitlines() if x.startswith(start)]
        if lines:
            return lines[0]
        time.sleep(0.2)
    raise AssertionError(f"no line {start!r}: {path.read_text()[-3000:]}")


def test_serve_starts_its_server_on_the_host_it_is_told_and_stops_it(tmp_path):
    config = write_config(tmp_path)
    mark = uuid.uuid4().hex
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [VENV_BIN / "sapis", "serve", str(config), "--host", "127.0.0.2"],
            env={**_env(tmp_path), MARK: mark},
            stdout=stdout,
            stderr=stderr,
        )
    tree = Tree(proc.pid, mark)
    try:
        url = _first_line(out, "Prefect UI: ", proc).split()[2]  # once the server answers
        assert url.startswith("http://127.0.0.2:"), url
        port = int(url.rsplit(":", 1)[1])
        assert _listening(port) == {"127.0.0.2"}  # that address only, not 0.0.0.0
        names = set()
        for _ in range(600):  # the deployments appear once `prefect.serve` has started
            found = _api(url, "/api/deployments/filter", {})[1]
            names = {d["name"] for d in found or []}
            if len(names) == 2:
                break
            time.sleep(0.5)
        assert names == {"campaign-campaign", "campaign-round"}
        tree.scan()
        assert tree.has("prefect", "server", "start") and tree.has("sapis.processes")
        proc.send_signal(signal.SIGTERM)
        # a graceful stop: status 0 from Prefect's runner once it runs, 143 before
        assert proc.wait(timeout=120) in (0, 143) and "Traceback" not in err.read_text()
        assert not tree.wait_until_at_most(0), tree.alive()
        assert not _listening(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        tree.kill_left()


FLOW = """
import sys
from pathlib import Path
from prefect import flow
from sapis.flows.server import prefect_server
from sapis.processes import guard_children

guard_children()  # a server left by a failed test is ended with this process

@flow
def tiny(x: int) -> int:
    return x + 1

with prefect_server(log=Path(sys.argv[1])) as server:
    print(server.api_url, tiny(41), flush=True)
    sys.stdin.readline()
"""


def test_a_prefect_server_on_postgresql_behind_basic_auth_runs_a_flow(tmp_path, postgres_server):
    import psycopg2

    url = postgres_server.create_database()
    auth = "sapis:s3cret"
    env = {
        **_env(tmp_path),
        "PREFECT_API_DATABASE_CONNECTION_URL": url.replace(
            "postgresql://", "postgresql+asyncpg://"
        ),
        "PREFECT_SERVER_API_AUTH_STRING": auth,  # the server asks for it
        "PREFECT_API_AUTH_STRING": auth,  # the client gives it
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOW, str(tmp_path / "server.log")],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.endswith(" 42\n"), line + proc.stderr.read()[-3000:]
        api = line.split()[0]
        port = int(api.split(":")[2].split("/")[0])
        assert _listening(port) == {"127.0.0.1"}
        body = {"flows": {"name": {"any_": ["tiny"]}}}
        assert _api(api, "/flow_runs/filter", body)[0] == 401  # no credentials, no data
        assert _api(api, "/flow_runs/filter", body, auth="sapis:wrong")[0] == 401
        status, runs = _api(api, "/flow_runs/filter", body, auth=auth)
        assert status == 200 and [r["state_type"] for r in runs] == ["COMPLETED"]
        with psycopg2.connect(url) as db, db.cursor() as cursor:  # stored in PostgreSQL
            cursor.execute("SELECT count(*) FROM flow_run WHERE id = %s", (runs[0]["id"],))
            assert cursor.fetchone() == (1,)
        proc.communicate("\n", timeout=60)
        assert proc.returncode == 0
        assert not _listening(port)  # stopped with the context
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        postgres_server.drop_database(url)


def test_serve_refuses_an_address_it_cannot_listen_on(tmp_path):
    config = write_config(tmp_path)
    out = subprocess.run(
        [VENV_BIN / "sapis", "serve", str(config), "--host", "no.such.host.invalid"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "cannot listen on 'no.such.host.invalid'" in out.stderr
    assert "Traceback" not in out.stderr
