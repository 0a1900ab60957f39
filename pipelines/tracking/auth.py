"""Who may use a shared tracking server: MLflow's basic-auth app, set up so that no well-known
password ever guards it.

`nst server --auth` (automatic when it binds beyond loopback) keeps its secrets in one folder
(`<data>/auth/`, mode 0700): the admin's password and the Flask secret key, each generated on first
start into a file only the server's owner can read (0600), and MLflow's auth configuration. Users:
`nst server add-user NAME [--read-only]`. Everybody signed in may read every run; writers (the
`nst-writers` role: EDIT on every experiment) may also create experiments and runs and log to them;
read-only users may not create, change or delete anything (auth_app.py closes the one gap MLflow
leaves, creating experiments). Clients sign in the standard MLflow way:
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. A server worker checks a password against its
hash once a minute, not at every request (AUTH_CACHE_SECONDS).
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import secrets
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import UserError

if TYPE_CHECKING:  # imported when used: it needs the server's extra (Flask-WTF)
    from mlflow.server.auth.client import AuthServiceClient

APP = "nst-auth"  # the entry point in pyproject.toml: MLflow's basic-auth app plus auth_app.py's rule
ADMIN = "admin"
WRITERS = "nst-writers"
WORKSPACE = "default"  # MLflow keeps roles per workspace; without workspaces everything is in this one
USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
#: How long a server worker trusts a credential it checked: a password changed or a user deleted
#: through MLflow's API reaches the worker that handled it at once, the server's other worker within this.
AUTH_CACHE_SECONDS = 60
#: MLflow's standard ways for a client to sign in to a tracking server.
CREDENTIALS = (USERNAME, PASSWORD, "MLFLOW_TRACKING_TOKEN")


def is_loopback(host: str) -> bool:
    """Whether binding to `host` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it resolves to the network
        return False


def new_password() -> str:
    """24 URL-safe characters (144 bits): above MLflow's length policy, safe to paste in a shell."""
    return secrets.token_urlsafe(18)


def _write_secret(path: Path, value: str) -> None:
    """Create `path` readable and writable by its owner only (0600 from the start, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")


@dataclass(frozen=True)
class AuthFolder:
    """The server's authentication state: `admin_password`, `secret_key`, `basic_auth.ini`."""

    folder: Path

    @property
    def admin_password_file(self) -> Path:
        return self.folder / "admin_password"

    @property
    def secret_key_file(self) -> Path:
        return self.folder / "secret_key"

    @property
    def config_file(self) -> Path:
        return self.folder / "basic_auth.ini"

    def admin_password(self) -> str:
        try:
            return self.admin_password_file.read_text().strip()
        except OSError as exc:
            raise UserError(f"cannot read the admin password in {self.admin_password_file} ({exc.strerror}); "
                            f"run this as the server's owner, or set {USERNAME}/{PASSWORD} to an admin's") from None

    def prepare(self, users_db: str, cache_seconds: int = AUTH_CACHE_SECONDS) -> bool:
        """Create what is missing; True when the admin password was generated now (the first start).
        `cache_seconds`: how long a worker trusts a credential it checked (0: checked every request)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        first = not self.admin_password_file.exists()
        if first:
            _write_secret(self.admin_password_file, new_password())
        if not self.secret_key_file.exists():
            # Kept, not drawn per start: sessions and CSRF tokens stay valid across restarts.
            _write_secret(self.secret_key_file, secrets.token_hex(32))
        config = configparser.ConfigParser()
        config["mlflow"] = {
            "default_permission": "READ",  # signed-in users read everything; writing needs the writers' role
            "database_uri": users_db,
            "admin_username": ADMIN,
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
            # A password's check (its hash) costs ~0.2 s on this CPU, and a request pays it every time:
            # a report of 8 runs read back signed in took 56 s. Checked once a minute per credential and
            # worker instead (MLflow's own cache, keyed by an HMAC of the password, never the password).
            "auth_cache_ttl_seconds": str(cache_seconds),
        }
        with open(self.config_file, "w") as file:
            config.write(file)
        self.config_file.chmod(0o600)
        return first

    def server_env(self) -> dict[str, str]:
        """What `mlflow server --app-name nst-auth` reads. The admin password only matters on the
        first start (MLflow creates the admin with it, and ignores it once the admin exists)."""
        return {"MLFLOW_AUTH_CONFIG_PATH": str(self.config_file.resolve()),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key_file.read_text().strip(),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password()}


def bootstrap(env: dict[str, str]) -> None:
    """Create the users' tables and the admin once, before the server's workers start: each worker
    would do it too, and two creating the same tables at once fail (MLflow does this step itself only
    for its own app name, basic-auth)."""
    done = subprocess.run([sys.executable, "-c", "from mlflow.server.auth import bootstrap_admin_user as b; b()"],
                          env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"the server's user database could not be prepared: {last[:300]}")


def admin_client(url: str, auth: AuthFolder) -> AuthServiceClient:
    """MLflow's auth client signed in as an admin: the caller's MLFLOW_TRACKING_USERNAME/PASSWORD
    when set, else `admin` with the password in the server's folder (on the server's host)."""
    with warnings.catch_warnings():  # mlflow.server's import warns about Starlette internals
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    if not (os.environ.get(USERNAME) and os.environ.get(PASSWORD)):
        os.environ[USERNAME], os.environ[PASSWORD] = ADMIN, auth.admin_password()
    return AuthServiceClient(url)


def _writers_role(client: AuthServiceClient) -> int:
    """The id of the writers' role (EDIT on every experiment), created on first use."""
    for role in client.list_roles(WORKSPACE):
        if role.name == WRITERS:
            return role.id
    role = client.create_role(WORKSPACE, WRITERS, "may create experiments and runs and log to them")
    client.add_role_permission(role.id, "experiment", "*", "EDIT")
    return role.id


def add_user(url: str, auth: AuthFolder, name: str, password: str, read_only: bool) -> None:
    """Create user `name` on the server at `url`; a writer unless `read_only`."""
    from mlflow.exceptions import MlflowException, RestException

    from pipelines.tracking.store import fail_fast_http

    fail_fast_http()
    client = admin_client(url, auth)
    try:
        client.create_user(name, password)
        if not read_only:
            client.assign_role(name, _writers_role(client))
    except (MlflowException, RestException) as exc:
        if "failed with exception" in str(exc):  # no HTTP answer at all
            raise UserError(f"add-user: no server answers at {url}; start it (make server) or pass --url") from None
        raise UserError(f"add-user {name}: the server at {url} answered: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(getattr(exc, "message", exc)).strip().splitlines()[0][:300]


def read_password(stdin: bool) -> str:
    """The new user's password: a line of standard input, or a generated one."""
    if not stdin:
        return new_password()
    line = sys.stdin.readline().strip()
    if not line:
        raise UserError("add-user --password-stdin: standard input gave no password (one line expected)")
    return line
