"""MLflow, part 1: the store (URI, checks, artifact root), experiments, params and tags (its UI's
links and command: pipelines.tracking.ui).

Part 2, `pipelines.tracking.run_log`, is what logs during a run (metrics, snapshots, status,
checkpoints). Nothing else in the project talks to MLflow.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import sys
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Param, RunInfo
from mlflow.exceptions import MlflowException

from pipelines.errors import UserError
from pipelines.tracking.auth import USERNAME

#: The default store, relative to the working directory (the project root under `make`).
DEFAULT_STORE = Path("mlruns")
_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_PARAM_MAX_CHARS = 6000


#: Requests nst keeps in flight to a tracking server at once (opening a batch's runs, writing them, ending
#: them), which answers them in parallel: 64 runs opened in 2.0 s instead of 10.8 s one at a time on this
#: CPU (BENCHMARKS.md, "A batch into a tracking server"). Into a SQLite file, one writer at a time.
REMOTE_REQUESTS = 8


def remote(uri: str) -> bool:
    """Whether `uri` is a tracking server's (requests over the network) rather than a database's or a file's."""
    return uri.startswith(("http://", "https://"))


def requests_at_once(uri: str) -> int:
    """How many requests (or runs' worth of them) nst keeps in flight to the store at `uri`."""
    return REMOTE_REQUESTS if remote(uri) else 1


def resolve_tracking_uri(uri: str | None = None, reading: bool = False) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else SQLite in ./mlruns (created). `reading`: for a
    command that only reads runs (report, sheet), a SQLite file that is not there is an error naming it,
    not a new empty store (in a folder where no sweep ran, say)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"
    if reading and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: nothing has run into it; run "
                        "from the folder the sweep ran in, or give its store with --tracking-uri")
    check_store(uri)
    return uri


#: MLflow's HTTP client retries for minutes by default; a user waits at most ~10 s for "unreachable".
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def fail_fast_http() -> None:
    """MLflow's HTTP client answers an unreachable server in seconds (unless the user set its retries)."""
    for key, value in HTTP_ENV.items():
        os.environ.setdefault(key, value)


#: SQLAlchemy's default driver module per database dialect (`postgresql+psycopg2://` names its own).
SQL_DRIVERS = {"postgresql": "psycopg2", "mysql": "MySQLdb", "mssql": "pyodbc"}
USE_INSTEAD = "use sqlite:///PATH/mlflow.db (one machine) or http://HOST:PORT (a tracking server: make server)"


#: What SQLite says of a file it cannot read as a database (another file's name, a damaged or cut-short copy).
NOT_SQLITE = ("file is not a database", "database disk image is malformed")


def check_store(uri: str) -> None:
    """Fail fast, with the fix, when the store cannot be used: an unknown scheme, MLflow's retired
    folder store, a database whose driver is missing or that does not answer, an unwritable SQLite
    folder, an unreachable tracking server (each answered within ~10 s, not after MLflow's retries)."""
    scheme = urlparse(uri).scheme
    dialect, _, driver = scheme.partition("+")
    if scheme in ("", "file"):
        folder = unquote(urlparse(uri).path) if scheme else uri
        raise UserError(f"{uri}: MLflow 3.13+ retired its file store (runs in plain folders); use "
                        f"sqlite:///{Path(folder).resolve()}/mlflow.db, or http://HOST:PORT (a tracking server)")
    if dialect in SQL_DRIVERS:
        _check_database(uri, dialect, driver)
    elif scheme not in ("sqlite", "http", "https", "databricks"):
        raise UserError(f"{uri}: nst cannot use a {scheme!r} store; {USE_INSTEAD}")
    if uri.startswith("sqlite:///"):
        home = Path(uri.removeprefix("sqlite:///")).parent
        try:
            home.mkdir(parents=True, exist_ok=True)
            probe = home / f".nst-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"store folder {home} is not writable ({exc.strerror}); "
                            "pick another with --tracking-uri or fix its permissions") from None
        # MLflow creates and migrates the schema on first use; two processes doing that at
        # once corrupt the migration. One at a time, under a lock file beside the database.
        with open(home / ".nst-init.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                MlflowClient(uri).search_experiments(max_results=1)
            except Exception as exc:
                if not any(text in str(exc) for text in NOT_SQLITE):
                    raise
                raise UserError(f"{uri.removeprefix('sqlite:///')} is not an MLflow store: the file is not an "
                                "SQLite database, or is damaged; give the store's mlflow.db, or a new file name "
                                "to start a store there") from None
            follow_a_move(uri)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)


def follow_a_move(uri: str) -> None:
    """A SQLite store records its runs' files by absolute path (MLflow's artifact locations). Moved to
    another folder, its runs' files could no longer be read (a report failed in a traceback); copied, its
    new runs wrote their files into the original store's folder. Where the store's own artifacts folder
    holds an experiment's files, that experiment's recorded paths (and its runs') are pointed there,
    once, with a note; a database copied without its artifacts keeps the paths it has."""
    root = artifact_root(uri)
    assert root is not None  # a SQLite store's
    here = Path(unquote(urlparse(root).path))
    with closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=30)) as db, db:
        for exp_id, name, location in db.execute("SELECT experiment_id, name, artifact_location FROM experiments"):
            own = f"{root}/{name}"
            if location == own or not location.endswith(f"/artifacts/{name}") or not (here / name).is_dir():
                continue
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (own, exp_id))
            db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? AND "
                       "substr(artifact_uri, 1, ?) = ?", (own, len(location) + 1, exp_id, len(location), location))
            print(f"note: this store was moved or copied: the files of its experiment {name!r} were recorded "
                  f"under {local_folder(location)}; they are read and written under {here / name} now",
                  file=sys.stderr)


def _check_server(uri: str) -> None:
    """The server answers, and lets this user in (MLflow's standard MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, sent as HTTP basic auth)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    fail_fast_http()
    try:
        answer = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                              params={"max_results": 1})
    except Exception as exc:  # noqa: BLE001 - any failure to talk to it means the same here
        raise UserError(f"tracking server {uri} is unreachable ({type(exc).__name__}); "
                        "start it (make server) or fix --tracking-uri / MLFLOW_TRACKING_URI") from None
    user = os.environ.get(USERNAME)
    if answer.status_code == 401 and not user:
        raise UserError(f"tracking server {uri} asks who you are: set MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD (its admin makes users: nst server add-user NAME)")
    if answer.status_code == 401:
        raise UserError(f"tracking server {uri} refused user {user!r}: wrong name or password "
                        "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    if answer.status_code == 403:
        raise UserError(f"tracking server {uri}: user {user!r} may not read runs there; ask its admin")


def quiet_store_errors() -> None:
    """MLflow's SQLAlchemy store logs every database error it raises, with its traceback (~60 lines a
    write when the disk is full). nst tells the error itself, once: as the run's nst.error, or as one line."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def denied(uri: str, exc: Exception) -> UserError | None:
    """The one line for a write the server refused (a read-only user), else None. MLflow raises a refused
    request as an MlflowException, a refused artifact upload as requests' HTTPError."""
    response = getattr(exc, "response", None)
    status = exc.get_http_status_code() if isinstance(exc, MlflowException) else getattr(response, "status_code", None)
    if status != 403:
        return None
    user = os.environ.get(USERNAME)
    return UserError(f"tracking server {uri}: user {user!r} may read runs but not create or change them "
                     "(a read-only user); ask its admin for a user that can write (nst server add-user NAME)")


def create_run(client: MlflowClient, exp_id: str, **kwargs: Any) -> RunInfo:
    """A new run (its id, its artifacts' URI); a server's refusal (a read-only user) as one line, before any work."""
    try:
        return client.create_run(exp_id, **kwargs).info
    except MlflowException as exc:
        raise (denied(client.tracking_uri, exc) or exc) from None


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database; a server chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


#: Without it MLflow 3's UI opens an experiment on its GenAI trace overview, not on the runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created (or restored) when needed."""
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=_experiment_artifacts(uri, name),
                                                tags=EXPERIMENT_KIND)
            except MlflowException as exc:  # another process created it a moment ago?
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise exc from None
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if "mlflow.experimentKind" not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    except MlflowException as exc:
        raise (denied(uri, exc) or exc) from None
    return experiment.experiment_id


def _experiment_artifacts(uri: str, name: str) -> str | None:
    root = artifact_root(uri)
    return f"{root}/{name}" if root else None


def local_folder(artifact_uri: str) -> Path | None:
    """The folder an artifact URI names when it is on this machine's disk."""
    parsed = urlparse(artifact_uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)[:_PARAM_MAX_CHARS]) for k, v in params.items()]
    for i in range(0, len(items), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + _PARAMS_PER_BATCH])


def _check_database(uri: str, dialect: str, driver: str) -> None:
    """The database's driver is installed and the database answers (MLflow itself would retry for
    minutes); one connection, with a short timeout."""
    import importlib.util

    module = {"psycopg": "psycopg", "pymysql": "pymysql", "mysqldb": "MySQLdb"}.get(driver, driver) or \
        SQL_DRIVERS[dialect]
    if importlib.util.find_spec(module) is None:
        hint = " (pip install '.[server]'; make test installs it)" if dialect == "postgresql" else ""
        raise UserError(f"{uri}: the {dialect} driver ({module}) is not installed{hint}; or {USE_INSTEAD}")
    import sqlalchemy

    timeout = {"connect_timeout": 5} if dialect in ("postgresql", "mysql") else {}
    try:
        with sqlalchemy.create_engine(uri, connect_args=timeout).connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the same here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"cannot open the store {uri} ({first}); start the database or fix the URI, "
                        f"or {USE_INSTEAD}") from None
