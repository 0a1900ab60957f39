"""The newcomer's path through the MLflow UI, checked in a real headless Chromium.

A tiny 3-point lr sweep goes into a temporary store; the UI starts as `make ui` starts it (`nst ui`),
which prints the link to the latest sweep; Playwright opens that link in Debian's Chromium and checks
what a person sees there: the sweep's three runs listed, each one's loss curve in the charts and its
image in the image grid. Screenshots go to reports/ui/ (the README's come from there). In CI a
missing browser fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"
SHOTS = ROOT / "reports" / "ui"
CHROMIUM = "/usr/bin/chromium"
# As root, in a sandbox with no network: no sandboxing, no background requests to Google.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUNS = ("lr=0.1 seed=0", "lr=1 seed=0", "lr=10 seed=0")
SWEEP = f"""
name: ui_sweep
description: Three learning rates, for the browser test.
base:
  preset: seed  # the slides' formulation: Adam, batchable (experiment files default to L-BFGS)
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "starry_night.jpg"}
  size: 64
  iterations: 12
  snapshots: [0, 6]
grid:
  optimizer.lr: [0.1, 1.0, 10.0]
"""

# One worker for the module under pytest-xdist: its sweep and its browser start once (dealt to two
# workers, each started them).
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("ui"), pytest.mark.heavy]


def _browser_or_skip() -> None:
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: `make test` installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} not installed (make test installs it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[str]:
    """The link `make ui` prints for a freshly run 3-point sweep, with the UI serving it."""
    _browser_or_skip()
    folder = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{folder}/mlflow.db"
    (folder / "ui_sweep.yaml").write_text(SWEEP)
    assert main(["experiment", str(folder / "ui_sweep.yaml"), "--tracking-uri", store, "--quiet"]) == 0
    port = _free_port()
    errors = (folder / "ui.err").open("w")
    server = subprocess.Popen(  # what `make ui` runs
        [sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port), "--tracking-uri", store],
        stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert server.stdout is not None
        printed = [server.stdout.readline() for _ in range(2)]
        link = printed[1].split("compared: ", 1)[1].strip()
        assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/"), printed
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("nst ui did not start") from None
                time.sleep(0.5)
        UI_PROCESS["pid"], UI_PROCESS["stderr"] = server.pid, folder / "ui.err"
        yield link
    finally:
        server.terminate()
        server.wait(timeout=30)
        errors.close()


UI_PROCESS: dict[str, Any] = {}  # the `nst ui` the fixture started: its pid, the file of its stderr


def _descendants(pid: int) -> list[str]:
    """The command lines of a process's children, grandchildren, … (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out.append((Path("/proc") / child / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            out.extend(_descendants(int(child)))
    return out


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.set_default_timeout(30_000)
        page.goto(ui)
        page.get_by_text(RUNS[0], exact=True).first.wait_for()
        close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
        if close.count():  # the assistant side panel takes a third of the screen
            close.click()
        banner = page.get_by_role("button", name="Exit shared view")
        if banner.count():  # "you're viewing a shared view": the link's view; its banner takes room
            page.locator("[data-component-id*='shared_view'] button[aria-label='Close'], "
                         "button:right-of(:text('Exit shared view'))").first.click()
        yield page
        browser.close()


def test_the_link_lists_the_sweeps_runs_in_the_model_training_view(page) -> None:
    for name in RUNS:
        page.get_by_text(name, exact=True).first.wait_for()
    assert page.get_by_text("3 matching runs").is_visible()
    assert not page.get_by_text("ui_sweep (sweep)").count()  # the children themselves, not a collapsed parent
    assert "workflowType=machine_learning" in page.url and "/traces" not in page.url
    page.screenshot(path=SHOTS / "runs.png")


def test_loss_total_is_charted_for_all_three_runs(page) -> None:
    assert page.locator("label:has(input[value=CHART]) input").is_checked()  # the link opens the charts
    page.get_by_placeholder("Search metric charts").fill("loss/")
    card = page.locator("[data-testid=experiment-view-compare-runs-card]", has_text="loss/total").first
    card.wait_for()
    for name in RUNS:
        card.get_by_text(f"{name} (loss/total)").wait_for(state="attached")
    lines = card.locator("path.js-line")
    deadline = time.monotonic() + 30
    while lines.count() < len(RUNS) and time.monotonic() < deadline:  # plotly draws after the data arrives
        time.sleep(0.5)
    assert lines.count() >= len(RUNS)
    time.sleep(1)  # let the other cards finish drawing before the picture
    page.screenshot(path=SHOTS / "charts.png")


def test_generated_images_are_shown_for_all_three_runs(page) -> None:
    page.get_by_placeholder("Search metric charts").fill("generated")
    card = page.locator("[data-testid=experiment-view-compare-runs-card]", has_text="generated").first
    card.wait_for()
    # The grid captions each image with all ~40 run params by default; the names say enough.
    card.locator("[data-testid=experiment-view-compare-runs-card-menu]").click()
    page.get_by_role("menuitem", name="Configure").click()
    page.get_by_text("Show run parameters").click()
    page.get_by_role("dialog").get_by_role("button", name="Save changes").click()
    card.locator("[data-component-id=fullscreen_button_chartcard]").click()
    dialog = page.get_by_role("dialog")
    images = dialog.locator("img[src*='generated']")
    images.first.wait_for()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        loaded = images.evaluate_all("els => els.filter(e => e.complete && e.naturalWidth > 0).length")
        runs = set(images.evaluate_all("els => els.map(e => new URL(e.src).searchParams.get('run_uuid'))"))
        if loaded >= 3 and len(runs) == 3:
            break
        page.mouse.wheel(0, 600)
        time.sleep(0.5)
    assert loaded >= 3 and len(runs) == 3, f"{loaded} images loaded for {len(runs)} runs"
    track = dialog.locator("span[data-orientation=horizontal]:has([role=slider])").first
    box = track.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)  # the last snapshot
    slider = dialog.get_by_role("slider").first
    deadline = time.monotonic() + 10
    while slider.get_attribute("aria-valuenow") != "12" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slider.get_attribute("aria-valuenow") == "12"
    time.sleep(2)  # the new images load
    page.screenshot(path=SHOTS / "images.png")
    page.keyboard.press("Escape")


def test_the_ui_runs_no_job_runner_and_prints_no_warnings(ui) -> None:
    """`mlflow ui` is `mlflow server`, whose GenAI job runner (a runner and seven huey consumers, 1.9 GB
    measured) serves nothing nst logs; and Starlette's deprecation warning, once per worker, is noise."""
    processes = _descendants(UI_PROCESS["pid"])
    assert any("multiprocessing" in p for p in processes), processes  # uvicorn's workers are there
    assert not [p for p in processes if "_job_runner" in p or "huey" in p], processes
    assert "Warning" not in UI_PROCESS["stderr"].read_text()


def test_screenshots_were_written() -> None:
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip("no browser")
    for name in ("runs.png", "charts.png", "images.png"):
        assert (SHOTS / name).stat().st_size > 20_000


def test_make_ui_starts_nst_ui_bound_to_loopback() -> None:
    from pipelines.tracking.ui import mlflow_ui_command

    command = mlflow_ui_command("sqlite:///x/mlflow.db", 5000)
    assert command[-6:] == ["--host", "127.0.0.1", "--port", "5000", "--workers", "2"]
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    out = subprocess.run([make, "-n", "ui"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "nst ui --port 5000" in out
