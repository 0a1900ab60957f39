"""A shared tracking server that lets in only its users: `nst server` with sign-in, started here
for real on loopback on both backends (SQLite; PostgreSQL), its users made by `nst server add-user`,
clients signing in the standard MLflow way (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from benchmarks.cluster import free_port
from pipelines.tracking.server import Serving

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"
NST = [sys.executable, "-m", "pipelines.cli"]
SIGN_IN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"
CHROMIUM = "/usr/bin/chromium"

# What these check (sign-in, users, the server's stores) does not depend on where a run's pixels are
# optimized; they need the server's extras (full mlflow, PostgreSQL), which a GPU machine may not have.
pytestmark = [pytest.mark.cpu_only("the tracking server's sign-in: a transfer's device changes nothing it checks"),
              # One worker for the module under pytest-xdist: its servers start once per database (dealt
              # to two workers, each started them), and its Ray test never meets test_cluster's cluster.
              pytest.mark.xdist_group("ray"), pytest.mark.heavy]
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _env(user: str | None = None, password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SIGN_IN}
    env["PYTHONPATH"] = str(ROOT)
    if user:
        env |= {SIGN_IN[0]: user, SIGN_IN[1]: password or ""}
    return env


def _nst(*args: str, user: str | None = None, password: str | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NST, *args], capture_output=True, text=True, cwd=ROOT, input=stdin,
                          env=_env(user, password), timeout=300)


@dataclass
class Server:
    url: str
    data: Path
    printed: str
    process: subprocess.Popen[bytes]

    @property
    def admin_password(self) -> str:
        return (self.data / "auth" / "admin_password").read_text().strip()

    def add_user(self, name: str, *flags: str, stdin: str | None = None) -> str:
        done = _nst("server", "add-user", name, *flags, "--url", self.url, "--data", str(self.data), stdin=stdin)
        assert done.returncode == 0, done.stderr
        return stdin.strip() if stdin else done.stdout.split("password: ", 1)[1].split()[0]


def _start(folder: Path, *args: str) -> Server:
    """`nst server ARGS` in the background (what `make server ARGS=...` runs), once it is up."""
    data, port = folder / "data", free_port()
    log = folder / f"server-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*NST, "server", "--port", str(port), "--data", str(data), *args],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 180
    while "point runs at it" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nst server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    return Server(f"http://127.0.0.1:{port}", data, log.read_text(), process)


def _stop(server: Server) -> None:
    server.process.terminate()  # nst server stops mlflow's server and PostgreSQL on SIGTERM
    server.process.wait(timeout=60)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request) -> Iterator[Server]:
    """SQLite: bound to every interface with no auth flag (sign-in turns itself on); PostgreSQL:
    on loopback, sign-in one option away (--auth)."""
    # Not under pytest's 0700 folder: as root, PostgreSQL runs as `postgres`, who must be able to enter it.
    folder = Path(tempfile.mkdtemp(prefix=f"nst-auth-{request.param}-"))
    folder.chmod(0o755)
    if request.param == "sqlite":
        # As the README's cluster recipe: the names clients use; this host's own tools still come by loopback.
        args = ["--db", "sqlite", "--host", "0.0.0.0", "--allowed-hosts", "head-node:5000"]
    else:
        args = ["--db", "postgresql", "--auth", "--pg-port", str(free_port()), "--pg-dir", str(folder / "pg")]
    server = _start(folder, *args)
    try:
        yield server
    finally:
        _stop(server)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def writer(server) -> tuple[str, str]:
    return "wendy", server.add_user("wendy")


@pytest.fixture(scope="module")
def reader(server) -> tuple[str, str]:
    return "rita", server.add_user("rita", "--read-only", "--password-stdin", stdin="rita-reads-only-42\n")


@pytest.fixture(scope="module")
def sweep(server, writer, tmp_path_factory) -> tuple[str, str, Path, tuple[str, str]]:
    """A writer's 2-run sweep, run through the server: its experiment's id, the link it printed, its file
    and its writer."""
    grid = tmp_path_factory.mktemp("grid") / "shared.yaml"
    grid.write_text(f"""
name: shared
base: {{content: {IMAGES / "grace_hopper.jpg"}, style: {IMAGES / "starry_night.jpg"}, size: 32, iterations: 4,
        snapshots: [0], checkpoint_every: 2, keep_checkpoints: true}}
grid: {{optimizer.lr: [0.1, 1.0]}}
""")
    done = _nst("experiment", str(grid), "--tracking-uri", server.url, "--quiet", user=writer[0], password=writer[1])
    assert done.returncode == 0, done.stderr[-2000:]
    link = next(word for word in done.stdout.split()
                if word.startswith(f"{server.url}/#/experiments/") and "viewStateShareKey" in word)
    return link.split("/#/experiments/")[1].split("/")[0].split("?")[0], link, grid, writer


def test_anonymous_and_wrong_passwords_get_401_on_the_api_and_the_ui(server, writer) -> None:
    for path in (SEARCH, "/"):
        assert requests.get(server.url + path, timeout=10).status_code == 401
        assert requests.get(server.url + path, auth=(writer[0], "not-the-password"), timeout=10).status_code == 401
        assert requests.get(server.url + path, auth=("nobody", writer[1]), timeout=10).status_code == 401
        assert requests.get(server.url + path, auth=writer, timeout=10).status_code == 200
        assert requests.get(server.url + path, auth=("admin", server.admin_password), timeout=10).status_code == 200
        # The right password trusted for a minute (below) lets no other password in meanwhile.
        assert requests.get(server.url + path, auth=(writer[0], "not-the-password"), timeout=10).status_code == 401


# MLflow's server package warns, as it is imported, of a deprecation in starlette: not nst's to fix.
@pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")
def test_a_password_is_checked_once_a_minute_per_worker_not_every_request(server, monkeypatch) -> None:
    # Its hash costs ~0.2 s a check here: every request paying it made a signed-in sweep 8x slower to
    # write and 12x slower to read back (BENCHMARKS.md, "A batch into a tracking server"). MLflow's own
    # cache does it, as the server's MLflow reads the configuration nst wrote.
    from mlflow.server.auth.config import read_auth_config

    from pipelines.tracking.auth import AUTH_CACHE_SECONDS

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(server.data / "auth" / "basic_auth.ini"))
    assert read_auth_config().auth_cache_ttl_seconds == AUTH_CACHE_SECONDS == 60


def test_admin_password_is_generated_kept_0600_and_printed_once_with_its_place(server) -> None:
    auth = server.data / "auth"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o700
    for name in ("admin_password", "secret_key"):
        assert stat.S_IMODE((auth / name).stat().st_mode) == 0o600, name
    password = server.admin_password
    assert len(password) >= 20 and password != "password1234"
    assert f"admin password (shown this once): {password}" in server.printed
    assert str(auth / "admin_password") in server.printed
    assert "Traceback" not in server.printed  # the workers did not race to create the users' tables


def test_a_writers_sweep_finishes(server, sweep) -> None:
    runs = requests.post(f"{server.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [sweep[0]]},
                         auth=("admin", server.admin_password), timeout=10).json()["runs"]
    assert len(runs) == 3 and {r["info"]["status"] for r in runs} == {"FINISHED"}  # the parent and its 2 runs
    # Kept (keep_checkpoints: true), then dropped through the server by the writer: the same sweep run
    # again without the key skips its FINISHED runs and deletes the checkpoints they still hold.
    assert all(tags and sizes and min(sizes) > 0 for tags, sizes in _checkpoints(server, runs))
    grid, writer = sweep[2], sweep[3]
    again = _nst("experiment", str(grid), "--tracking-uri", server.url, "--quiet", "--set", "keep_checkpoints=false",
                 user=writer[0], password=writer[1])
    assert again.returncode == 0 and "deleted the checkpoints of 2 FINISHED runs" in again.stdout, again.stdout
    runs = requests.post(f"{server.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [sweep[0]]},
                         auth=("admin", server.admin_password), timeout=10).json()["runs"]
    assert _checkpoints(server, runs) == [([], []), ([], [])]


def _checkpoints(server: Server, runs: list[dict]) -> list[tuple[list[str], list[int]]]:
    """Each child run's checkpoint tags and the sizes of its checkpoint files on the server."""
    children = [r for r in runs if any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    assert len(children) == 2
    return [([t["key"] for t in run["data"]["tags"] if t["key"].startswith("nst.checkpoint_step")],
             [int(f.get("file_size", 0)) for f in requests.get(
                 f"{server.url}/api/2.0/mlflow/artifacts/list", params={"run_id": run["info"]["run_id"],
                 "path": "checkpoint"}, auth=("admin", server.admin_password), timeout=10).json().get("files", [])])
            for run in children]


def test_a_read_only_user_reads_but_cannot_create_change_or_delete(server, sweep, reader, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv(SIGN_IN[0], reader[0])
    monkeypatch.setenv(SIGN_IN[1], reader[1])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client, experiment = MlflowClient(server.url), sweep[0]
    runs = client.search_runs([experiment], filter_string="tags.`mlflow.parentRunId` != ''")
    assert len(runs) == 2 and all("loss/total" in r.data.metrics for r in runs)  # reads runs, metrics
    run_id = runs[0].info.run_id
    assert client.get_metric_history(run_id, "loss/total")  # what the UI's charts compare
    writes = {
        "create a run": lambda: client.create_run(experiment),
        "log a metric": lambda: client.log_metric(run_id, "loss/total", 0.0),
        "tag a run": lambda: client.set_tag(run_id, "note", "mine now"),
        "delete a run": lambda: client.delete_run(run_id),
        "create an experiment": lambda: client.create_experiment("rita's own"),
    }
    for what, write in writes.items():
        with pytest.raises(MlflowException) as refused:
            write()
        assert refused.value.get_http_status_code() == 403, what
    assert client.get_run(run_id).info.lifecycle_stage == "active"


def test_nst_answers_missing_wrong_and_read_only_credentials_in_one_line(server, sweep, reader, tmp_path) -> None:
    args = ["run", "--content", str(IMAGES / "grace_hopper.jpg"), "--style", str(IMAGES / "starry_night.jpg"),
            "--set", "size=32", "--set", "iterations=2", "--tracking-uri", server.url, "--quiet"]
    cases = {"asks who you are": (None, None), "wrong name or password": (reader[0], "wrong-password-123"),
             "read-only user": reader}
    for needle, (user, password) in cases.items():
        start = time.monotonic()
        done = _nst(*args, user=user, password=password)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1 and needle in err[0], done.stderr[-1500:]
        assert err[0].startswith("nst: error: ") and time.monotonic() - start < 60
    # A sweep the store holds, run again by the read-only user: the same line, before any work.
    done = _nst("experiment", str(sweep[2]), "--tracking-uri", server.url, "--quiet", user=reader[0],
                password=reader[1])
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "read-only user" in err[0], done.stderr[-1500:]
    # Its report is built all the same (it ended in a traceback, logging the files on the parent run).
    done = _nst("report", "shared", "--out", str(tmp_path / "report"), "--tracking-uri", server.url,
                user=reader[0], password=reader[1])
    assert done.returncode == 0 and (tmp_path / "report" / "report.md").is_file(), done.stderr[-1500:]
    assert "report: not logged on the sweep's parent run, tracking server" in done.stdout
    # Nothing was written: the read-only user's attempt left no run behind.
    admin = requests.get(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=50",
                         auth=("admin", server.admin_password), timeout=10).json()
    assert {e["name"] for e in admin["experiments"]} <= {"Default", "shared"}


def test_a_read_only_user_compares_the_runs_in_the_ui(server, sweep, reader) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            anonymous = browser.new_context()
            assert anonymous.request.get(sweep[1]).status == 401
            signed_in = browser.new_context(http_credentials={"username": reader[0], "password": reader[1]},
                                            viewport={"width": 1500, "height": 950})
            page = signed_in.new_page()
            page.set_default_timeout(30_000)
            page.goto(sweep[1])  # the link the writer's sweep printed: its runs compared
            names = ("lr=0.1 seed=0", "lr=1 seed=0")
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for()
            assert page.get_by_text("2 matching runs").is_visible()
            # Compared: both runs' loss/total drawn on one chart (plotly draws once the data arrived).
            card = page.locator("[data-testid=experiment-view-compare-runs-card]", has_text="loss/total").first
            for name in names:
                card.get_by_text(f"{name} (loss/total)").wait_for(state="attached")
            lines, deadline = card.locator("path.js-line"), time.monotonic() + 30
            while lines.count() < len(names) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert lines.count() >= len(names)
            (ROOT / "reports" / "ui").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ROOT / "reports" / "ui" / "read_only.png")
        finally:
            browser.close()


def test_ray_workers_log_with_the_drivers_credentials(server, writer, tmp_path, request) -> None:
    if request.node.callspec.params["server"] != "sqlite":  # 33 s a case, for nothing the workers do differently
        pytest.skip("once, against the server bound beyond loopback (the README's cluster recipe): the database "
                    "behind a server changes nothing of what Ray's workers send it")
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]' (make test installs it)")
    from benchmarks.cluster import grid_file, local_ray

    grid = grid_file(tmp_path, "ray_signed_in", size=32, iterations=4)
    with local_ray(num_cpus=2) as address:  # `ray start` ran with no credentials in its environment
        done = _nst("experiment", str(grid), "--executor", "ray", "--ray-address", address, "--tracking-uri",
                    server.url, "--quiet", "--batch", "2", user=writer[0], password=writer[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("on Ray") == 4
    runs = requests.post(f"{server.url}/api/2.0/mlflow/runs/search", auth=writer, timeout=10,
                         json={"experiment_ids": [_experiment(server, "ray_signed_in")]})
    statuses = [r["info"]["status"] for r in runs.json()["runs"]]
    assert statuses.count("FINISHED") == 5  # the parent and 4 runs, logged from the workers


def _experiment(server: Server, name: str) -> str:
    answer = requests.get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name},
                          auth=("admin", server.admin_password), timeout=10)
    return answer.json()["experiment"]["experiment_id"]


def test_a_restart_keeps_the_admin_password_and_the_secret_key(tmp_path) -> None:
    first = _start(tmp_path, "--db", "sqlite", "--auth")
    password, key = first.admin_password, (first.data / "auth" / "secret_key").read_text()
    _stop(first)
    second = _start(tmp_path, "--db", "sqlite", "--auth")
    try:
        assert "shown this once" not in second.printed and "admin_password" in second.printed
        assert second.admin_password == password and (second.data / "auth" / "secret_key").read_text() == key
        assert requests.get(second.url + SEARCH, auth=("admin", password), timeout=10).status_code == 200
    finally:
        _stop(second)


def test_serving_the_network_without_sign_in_takes_a_flag_that_says_so_and_warns(tmp_path) -> None:
    server = _start(tmp_path, "--db", "sqlite", "--host", "0.0.0.0", "--serve-network-without-auth")
    try:
        assert "WITHOUT authentication: anyone who reaches the port can read, change and delete" in server.printed
        assert requests.get(server.url + SEARCH, timeout=10).status_code == 200
    finally:
        _stop(server)


@pytest.mark.parametrize(("options", "signs_in"), [
    (Serving(), False), (Serving(auth=True), True), (Serving(host="0.0.0.0"), True),
    (Serving(host="10.1.2.3"), True), (Serving(host="head-node"), True), (Serving(host="::1"), False),
    (Serving(host="0.0.0.0", without_auth=True), False),
])
def test_sign_in_is_on_beyond_loopback_and_one_option_away_on_it(options, signs_in) -> None:
    assert options.signs_in() is signs_in


@pytest.mark.parametrize("options", [Serving(auth=True, host="0.0.0.0", without_auth=True),
                                     Serving(without_auth=True)])
def test_contradictory_server_options_are_refused(options) -> None:
    from pipelines.errors import UserError

    with pytest.raises(UserError):
        options.signs_in()
