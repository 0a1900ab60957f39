"""A tracking server for many writers: `mlflow server` on PostgreSQL (or SQLite).

SQLite takes one writer at a time; a sweep spread over Ray workers on several hosts needs a
database server. `nst server` (make server) starts Debian's PostgreSQL on loopback with its
data in `.pg/` under the project, then MLflow's server in front of it, with artifacts served
from a directory (clients upload through the server, so workers need no shared disk).
Beyond loopback it signs users in (auth.py): nobody reaches the runs without a password.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.tracking.auth import APP, AuthFolder, bootstrap, is_loopback

PG_DATABASE, PG_USER = "mlflow", "nst"


def check_port(host: str, port: int, what: str, flag: str) -> None:
    """UserError when `port` on `host` is taken: the server would start, print its address, and then
    die on "address already in use", leaving the address to whatever holds it (another UI, say)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As uvicorn binds: a port another server left in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"{what}: port {port} on {host} is taken ({exc.strerror}); stop what holds it, "
                            f"or pick another with {flag}") from None


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise UserError(f"PostgreSQL's {name} is not installed; `make server` installs Debian's postgresql "
                        "(apt-get install postgresql), or use the light option: make server DB=sqlite")
    return path


def _as_owner() -> list[str]:
    """PostgreSQL refuses to run as root; as root, run it as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class Postgres:
    """A PostgreSQL cluster in `folder`, listening on 127.0.0.1:`port` only."""

    folder: Path
    port: int = 5432

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def uri(self) -> str:
        return self.uri_of(PG_DATABASE)

    def uri_of(self, database: str) -> str:
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*_as_owner(), *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"{Path(cmd[0]).name} failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}"
                            f" (log: {self.folder / 'postgres.log'})")

    def start(self) -> str:
        """Create the cluster on first use, start it, create the database; returns its URI."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        if not (self.data / "PG_VERSION").exists():
            # trust on loopback only: the server listens on 127.0.0.1 (README: exposing it).
            self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder.resolve()}"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "postgres.log"),
                  "-o", options, "-w", "start")
        return self.database(PG_DATABASE)

    def database(self, name: str) -> str:
        """The URI of database `name` (runs: mlflow; users of an authenticated server: mlflow_auth),
        created on first use."""
        psql = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", "postgres"]
        exists = subprocess.run([*psql, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                                capture_output=True, text=True)
        if exists.stdout.strip() != "1":
            subprocess.run([*psql, "-c", f"CREATE DATABASE {name}"], capture_output=True, check=True)
        return self.uri_of(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*_as_owner(), _pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                           capture_output=True)


def mlflow_server_command(backend_uri: str, artifacts: Path, host: str = "127.0.0.1", port: int = 5000,
                          workers: int = 2, app: str | None = None) -> list[str]:
    """`mlflow server` with proxied artifacts: clients upload and download through it. `app`:
    MLflow's name of a server app (auth.APP: sign-in required)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    # `python -m mlflow`, not the `mlflow` script beside python: wheels installed with pip --target
    # (a GPU machine without network: ../shared/gpu/env.sh) leave no script there.
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend_uri,
            "--artifacts-destination", str(artifacts.resolve()),
            "--serve-artifacts", "--host", host, "--port", str(port), "--workers", str(workers),
            *(["--app-name", app] if app else [])]


#: MLflow 3.17's server imports a module Starlette deprecates, and each of its workers printed the
#: warning at every start: four two-line warnings under `nst ui`'s address, about nothing nst can change.
_QUIET = "ignore:starlette.middleware.wsgi is deprecated"


def server_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `mlflow server` and `mlflow ui` (which is `mlflow server`): MLflow 3's GenAI job
    runner (a runner and seven huey consumers, 1.9 GB of memory measured under `nst ui`) serves nothing
    nst logs, so it is off; and Starlette's deprecation warning is not printed."""
    base = {**os.environ, **(env or {})}
    warnings = ",".join(filter(None, [base.get("PYTHONWARNINGS"), _QUIET]))
    return {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": warnings}


def start_mlflow_server(command: list[str], env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """Start it in its own process group, so that stopping it stops its uvicorn workers too."""
    return subprocess.Popen(command, env=server_environment(env), start_new_session=True, **popen)


def stop_mlflow_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_up(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 120.0) -> None:
    """Poll the server's /health until it answers (the first start migrates the schema)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UserError(f"mlflow server exited with status {process.returncode} before it was up")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"mlflow server at {url} did not answer within {timeout:.0f} s")


@dataclass(frozen=True)
class Serving:
    """What `nst server` was asked for."""

    db: str = "postgresql"
    host: str = "127.0.0.1"
    port: int = 5000
    data: Path = Path("mlruns/server")
    pg_dir: Path = Path(".pg")
    pg_port: int = 5433
    allowed_hosts: str | None = None
    auth: bool = False
    without_auth: bool = False

    @property
    def auth_folder(self) -> AuthFolder:
        return AuthFolder(self.data / "auth")

    def signs_in(self) -> bool:
        """Sign-in is on when asked for, and whenever the server is reachable beyond loopback
        unless the user said, by name, that anyone may use it."""
        if self.auth and self.without_auth:
            raise UserError("--auth and --serve-network-without-auth contradict each other; pick one")
        if self.without_auth and is_loopback(self.host):
            raise UserError(f"--serve-network-without-auth: {self.host} is loopback, nothing to open; drop the flag")
        return self.auth or not (self.without_auth or is_loopback(self.host))


def _sign_in(options: Serving, postgres: Postgres | None) -> dict[str, str]:
    """The secrets and the users' database (beside the runs' database), ready before the server starts;
    returns the server's environment. The admin password is printed on the first start only."""
    auth = options.auth_folder
    users = postgres.database("mlflow_auth") if postgres else f"sqlite:///{auth.folder.resolve() / 'users.db'}"
    if auth.prepare(users):
        print(f"admin password (shown this once): {auth.admin_password()}\n"
              f"  kept in {auth.admin_password_file} (mode 0600: only you can read it)")
    env = auth.server_env()
    bootstrap(env)
    return env


def serve(options: Serving) -> int:
    """`nst server`: PostgreSQL (or SQLite) and `mlflow server` in front of it, until Ctrl-C or kill."""
    signs_in = options.signs_in()
    check_port(options.host, options.port, "nst server", "--port (make server ARGS=\"--port 5001\")")
    if options.db == "postgresql":  # pg_ctl would only say "failed", its log why
        check_port("127.0.0.1", options.pg_port, "nst server's PostgreSQL",
                   "--pg-port (make server ARGS=\"--pg-port 5434\")")
    postgres = Postgres(options.pg_dir, options.pg_port) if options.db == "postgresql" else None
    options.data.mkdir(parents=True, exist_ok=True)
    backend = postgres.start() if postgres else f"sqlite:///{(options.data / 'mlflow.db').resolve()}"
    try:
        env = _sign_in(options, postgres) if signs_in else {}
        if not signs_in and not is_loopback(options.host):
            print(f"WARNING: serving {options.host}:{options.port} WITHOUT authentication: anyone who reaches "
                  "the port can read, change and delete every run", file=sys.stderr)
        command = mlflow_server_command(backend, options.data / "artifacts", options.host, options.port,
                                        app=APP if signs_in else None)
        if options.allowed_hosts:
            # This host's own clients (nst server add-user, a browser on the head node) come by loopback.
            loopback = f"127.0.0.1:{options.port},localhost:{options.port}"
            command += ["--allowed-hosts", f"{options.allowed_hosts},{loopback}"]
        # Stopped by Ctrl-C or by `kill` (a job scheduler's way): either way take the server down cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        server = start_mlflow_server(command, env)
        try:
            url = f"http://{'127.0.0.1' if options.host == '0.0.0.0' else options.host}:{options.port}"
            wait_until_up(url, server)
            print(f"tracking server up: {url}  (backend {backend})")
            if signs_in:
                print(f"sign-in required; add users: nst server add-user NAME [--read-only]  (admin password: "
                      f"{options.auth_folder.admin_password_file})")
            print(f"point runs at it:  export MLFLOW_TRACKING_URI={url}   # Ctrl-C stops the server", flush=True)
            return server.wait()
        except KeyboardInterrupt:
            print("nst server: stopped", file=sys.stderr)
            return 0
        finally:
            stop_mlflow_server(server)
    finally:
        if postgres:
            postgres.stop()
