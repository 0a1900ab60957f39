"""Read a finished sweep back from MLflow: children, metric histories and images.

Reports are built only from what the store holds (no re-optimization), so they work for
any store the runs were logged to, local or remote.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from nst.images import load_image
from nst.scales import resize
from pipelines.errors import UserError
from pipelines.tracking import store
from pipelines.tracking.run_log import SNAPSHOT_FILE
from pipelines.tracking.tags import ERROR_TAG, POINT_TAG, RUN_KEY_TAG, SWEEP_KEY_TAG, SWEEP_TAG, VARIED_TAG

LOSSES = ("loss/total", "loss/content", "loss/style")
STYLE_FILE = re.compile(r"^style(_\d+)?\.png$")  # a run's painting, and a blend's others


@dataclass
class RunView:
    """One child run as the report sees it; images are 0-1 tensors at the run's size."""

    run: Run
    name: str
    varied: dict[str, str]
    history: dict[str, dict[int, float]]
    snapshots: dict[int, object] = field(default_factory=dict)  # step -> (1, 3, H, W) tensor
    content: object = None
    style: object = None  # the painting (a blend's: its paintings side by side)
    final: object = None

    @property
    def iterations(self) -> int:
        """Updates the final image had: one more than the last logged step (a pyramid's steps
        over all its scales; fewer than configured when `stop` ended the run)."""
        steps = self.history.get("loss/total")
        if steps:
            return max(steps) + 1
        return int(self.run.data.params.get("iterations", max(self.snapshots, default=0)))

    def loss_at(self, key: str, step: int) -> float | None:
        """The metric at `step`, or at the last logged step before it (the final image's
        loss is never logged: metric step k is the loss of the image after k updates)."""
        series = self.history.get(key, {})
        steps = [s for s in series if s <= step]
        return series[max(steps)] if steps else None


@dataclass
class SweepView:
    experiment: str
    parent: Run
    spec: dict
    runs: list[RunView]
    not_finished: list[Run] = field(default_factory=list)  # the newest run of each point with none FINISHED

    def left_out(self) -> str:
        """A sentence naming the points left out, none of whose runs FINISHED: each newest run's status and
        error ("" when every point has a FINISHED run)."""
        if not self.not_finished:
            return ""
        told = [f"`{run.info.run_name}` ({run.info.status}"
                + (f": {run.data.tags[ERROR_TAG]}" if ERROR_TAG in run.data.tags else "") + ")"
                for run in self.not_finished]
        return f"Not in it, none of their runs FINISHED: {', '.join(told)}."


def _download_image(client: MlflowClient, run_id: str, path: str, folder: Path) -> object:
    local = client.download_artifacts(run_id, path, str(folder))
    return load_image(local, _size_of(local))


def _size_of(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def find_parent(client: MlflowClient, experiment: str, parent_id: str | None) -> Run:
    if parent_id:
        try:
            return client.get_run(parent_id)
        except Exception:  # noqa: BLE001 - MLflow raises its own types for "not found"
            raise UserError(f"run {parent_id}: not in this store; check --parent and --tracking-uri") from None
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{experiment}' and tags.`{SWEEP_KEY_TAG}` LIKE '%'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    parents = list(runs)  # only parent runs carry the sweep key
    if not parents:
        # Often a store other than the one meant (a sweep run from another folder writes into that folder's
        # mlruns/): say which store this is and what it holds.
        held = sweeps_in(client)
        there = f"sweeps there: {', '.join(held)}" if held else "no sweeps there"
        if exp is not None and client.search_runs([exp.experiment_id], max_results=1):
            # `nst run`'s experiment (nst, or --experiment): runs, but no sweep to report on.
            raise UserError(f"experiment {experiment!r} in {client.tracking_uri} holds single runs (nst run); "
                            f"nst report and nst sheet read sweeps ({there}); open single runs in the MLflow UI")
        raise UserError(f"no sweep {experiment!r} in {client.tracking_uri} ({there}); run `nst experiment "
                        f"{experiment}.yaml` first, or give the store it ran into with --tracking-uri")
    return parents[0]


def sweeps_in(client: MlflowClient) -> list[str]:
    """The names of the sweeps a store holds, sorted."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    parents = client.search_runs(ids, filter_string=f"tags.`{SWEEP_KEY_TAG}` LIKE '%'", max_results=10000)
    return sorted({run.data.tags[SWEEP_TAG] for run in parents if SWEEP_TAG in run.data.tags})


def load_sweep(client: MlflowClient, experiment: str, parent_id: str | None = None,
               threads: int | None = None) -> SweepView:
    """The sweep's parent, its experiment file (from the parent's artifacts) and its FINISHED children,
    read `threads` at a time (None: store.requests_at_once)."""
    parent = find_parent(client, experiment, parent_id)
    pid = parent.info.run_id
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{pid}'", max_results=10000,
    )
    finished = [c for c in children if c.info.status == "FINISHED"]
    if not finished:
        raise UserError(_nothing_finished(parent, children))
    varied_keys = json.loads(parent.data.tags.get(VARIED_TAG, "[]"))
    spec = _spec(client, pid)
    # A run is ten requests or so (its losses, its images); a tracking server answers several at once.
    if threads is None:
        threads = store.requests_at_once(client.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(threads) as pool:
        views = list(pool.map(lambda child: _view(client, child, varied_keys, Path(tmp) / child.info.run_id),
                              finished))
    # In the experiment file's order when the runs know it (nst.point), else by what they vary.
    views.sort(key=lambda v: (int(v.run.data.tags.get(POINT_TAG, 10**9)),
                              [_sort_key(v.varied[k]) for k in varied_keys]))
    return SweepView(parent.data.tags.get(SWEEP_TAG, experiment), parent, spec, views, _not_finished(children))


def _not_finished(children: list[Run]) -> list[Run]:
    """The newest run of each point none of whose runs FINISHED (FAILED, KILLED, still RUNNING), by start."""
    finished = {c.data.tags.get(RUN_KEY_TAG) for c in children if c.info.status == "FINISHED"}
    newest: dict[str | None, Run] = {}
    for child in sorted(children, key=lambda c: c.info.start_time, reverse=True):
        key = child.data.tags.get(RUN_KEY_TAG)
        if key not in finished:
            newest.setdefault(key, child)
    return sorted(newest.values(), key=lambda c: int(c.data.tags.get(POINT_TAG, 10**9)))


def _nothing_finished(parent: Run, children: list[Run]) -> str:
    """What to tell of a sweep none of whose runs FINISHED: its runs' statuses, and what to do."""
    counts = Counter(child.info.status for child in children)
    held = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no runs"
    what = ("wait for its command to end, or run it again if it was stopped (its runs resume)"
            if counts["RUNNING"] or counts["KILLED"] else "run the experiment (again) first")
    return (f"sweep {parent.data.tags.get(SWEEP_TAG, '')} (parent run {parent.info.run_id}): no FINISHED runs yet "
            f"({held}); reports read FINISHED runs: {what}")


def _view(client: MlflowClient, child: Run, varied_keys: list[str], folder: Path) -> RunView:
    """One FINISHED run as the report reads it: its losses, its snapshots, its input and final images."""
    rid = child.info.run_id
    history = {k: {m.step: m.value for m in client.get_metric_history(rid, k)} for k in LOSSES}
    view = RunView(
        child, child.info.run_name or rid,
        {k: child.data.params.get(k, child.data.tags.get(f"nst.{k}", "")) for k in varied_keys}, history,
    )
    for artifact in client.list_artifacts(rid, "images"):
        match = SNAPSHOT_FILE.match(Path(artifact.path).name)
        if match:
            view.snapshots[int(match.group(1))] = _download_image(client, rid, artifact.path, folder)
    view.content = _download_image(client, rid, "content.png", folder)
    # A blend's paintings: style.png, style_2.png, ... (pipelines.execution.inputs).
    names = sorted((a.path for a in client.list_artifacts(rid) if STYLE_FILE.match(a.path)), key=lambda n: (len(n), n))
    view.style = side_by_side([_download_image(client, rid, name, folder) for name in names])
    view.final = _download_image(client, rid, "final.png", folder)
    return view


def side_by_side(images: list[Any]) -> Any:
    """(1, 3, H, W) images in a row, each scaled to the first one's height (one image: itself)."""
    if len(images) == 1:
        return images[0]
    height = images[0].shape[-2]
    scaled = [image if image.shape[-2] == height else
              resize(image, (height, max(1, round(image.shape[-1] * height / image.shape[-2])))) for image in images]
    return torch.cat(scaled, dim=-1)


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _spec(client: MlflowClient, run_id: str) -> dict:
    """The experiment file the sweep was run from, as logged on its parent run."""
    for artifact in client.list_artifacts(run_id):
        if artifact.path.endswith((".yaml", ".yml")):
            with tempfile.TemporaryDirectory() as tmp:
                text = Path(client.download_artifacts(run_id, artifact.path, tmp)).read_text()
            loaded = yaml.safe_load(text)
            return loaded if isinstance(loaded, dict) else {}
    return {}
