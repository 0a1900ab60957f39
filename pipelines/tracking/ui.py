"""The MLflow UI of a store: where it serves, the links nst prints (a run, a sweep compared), and the
command that starts it (`nst ui`, `make ui`) or the hint that names that command."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

from mlflow import MlflowClient

from pipelines.tracking.store import DEFAULT_STORE, remote

#: Where `make ui` (`nst ui`) serves a local store's UI.
UI_PORT = 5000
#: One person's browser: MLflow's default of 4 uvicorn workers held ~250 MB each here, and each worker
#: serves concurrent requests on its own threads.
UI_WORKERS = 2


def ui_base(uri: str, port: int = UI_PORT) -> str:
    """The UI's address for a store: a tracking server serves its own; a local store's is `nst ui`'s."""
    return uri.rstrip("/") if remote(uri) else f"http://127.0.0.1:{port}"


#: The checkout's own store, which `make ui` serves (None when nst is installed without its Makefile).
_PROJECT = Path(__file__).resolve().parents[2]
PROJECT_STORE = f"sqlite:///{_PROJECT / DEFAULT_STORE / 'mlflow.db'}" if (_PROJECT / "Makefile").is_file() else None


def ui_hint(uri: str) -> str:
    """How to start the UI a local store's links point at, as a command that serves *this* store:
    `make ui` serves the checkout's mlruns/ (or MLFLOW_TRACKING_URI), so a run from another folder,
    into that folder's mlruns/, is told `nst ui --tracking-uri ...` instead. "" for a tracking server,
    which serves its own UI."""
    if remote(uri):
        return ""
    if uri == PROJECT_STORE and os.environ.get("MLFLOW_TRACKING_URI", uri) == uri:
        return "make ui"
    return f"{nst_program()} ui --tracking-uri {shlex.quote(uri)}"


def nst_program() -> str:
    """How to call nst again, for a command line nst prints: `nst` when that is the script on PATH,
    else the script as it was called (`.venv/bin/nst`), or `python -m pipelines.cli` as it was run."""
    nst = shutil.which("nst")
    here = Path(sys.argv[0]).resolve()
    if here.name != "nst":  # `python -m pipelines.cli`, or a test
        return f"{shlex.quote(sys.executable)} -m pipelines.cli"
    return "nst" if nst and Path(nst).resolve() == here else shlex.quote(str(here))


def sweep_link(client: MlflowClient, uri: str, experiment_id: str, parent_run_id: str, port: int = UI_PORT) -> str:
    """The MLflow UI page of one sweep: its runs (the parent's children) listed, lowest final J first,
    and compared in the chart view with the image grid.

    - `workflowType=machine_learning`: MLflow 3 otherwise opens an experiment on its GenAI overview.
    - Sorted by a metric, not by date: under date order with a filter the UI nests the children under
      their (collapsed) parent, and the charts draw nothing.
    - A shared view state (the UI's own "share" mechanism: the experiment tag
      `mlflow.sharedViewState.<key>`) shows every run, not the UI's default first 10. The same filter
      and order stand in the link itself too, for a UI that reads no shared state.
    """
    facets = {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
              "orderByKey": "metrics.`loss/total`", "orderByAsc": True}
    state = {**facets, "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs",
             "datasetsFilter": [], "runsHiddenMode": "SHOW_ALL"}
    key = f"nst-{parent_run_id}"
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
    query = urlencode({"viewStateShareKey": key, "workflowType": "machine_learning", "compareRunsMode": "CHART",
                       **{k: str(v).lower() if isinstance(v, bool) else v for k, v in facets.items()}},
                      quote_via=quote)
    return f"{ui_base(uri, port)}/#/experiments/{experiment_id}/runs?{query}"


def latest_sweep(client: MlflowClient) -> tuple[str, str] | None:
    """(experiment id, parent run id) of the sweep started last in the store, if any."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, filter_string="tags.`nst.sweep_key` != ''", max_results=1,
                                 order_by=["attributes.start_time DESC"]) if experiments else []
    return (parents[0].info.experiment_id, parents[0].info.run_id) if parents else None


def opening_note(client: MlflowClient, uri: str, port: int = UI_PORT) -> str:
    """What `nst ui` says beside its address: the link to the latest sweep, or, in a store without
    one, what it holds, so that a UI opened on the wrong store (a folder where nothing ran) says so."""
    latest = latest_sweep(client)
    if latest:
        return f"the latest sweep's runs compared: {sweep_link(client, uri, *latest, port=port)}"
    experiments = [e.experiment_id for e in client.search_experiments()]
    if experiments and client.search_runs(experiments, max_results=1):
        return "no sweep in this store yet, only single runs (`nst run`'s, in the experiment 'nst')"
    return ("this store holds no runs yet; they appear as `nst run` and `nst experiment` write them. A command run "
            "from another folder wrote into that folder's mlruns/: `nst ui --tracking-uri "
            "sqlite:///<folder>/mlruns/mlflow.db` serves it")


def mlflow_ui_command(uri: str, port: int = UI_PORT) -> list[str]:
    """`mlflow ui` on the store, bound to loopback (nothing of a local store is served beyond this host)."""
    # `python -m mlflow`, as for the server (server.mlflow_server_command): a pip --target install has no script.
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
            str(port), "--workers", str(UI_WORKERS)]
