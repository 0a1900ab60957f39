"""Bad input at the command line: one line naming the problem and the fix, exit 2, no
traceback, nothing written to the store."""

import errno
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from pipelines.cli import main

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
STYLE = str(IMAGES / "starry_night.jpg")


def _jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buffer, "JPEG")
    return buffer.getvalue()


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "photo.jpg"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(_jpeg()[:200])
    elif kind == "text":
        path.write_text("a shopping list, not a photo")
    elif kind == "1x1":
        Image.new("RGB", (1, 1)).save(path, "JPEG")
    elif kind == "bomb":
        Image.new("RGB", (3000, 3000)).save(path, "JPEG")
    return path


def _expect_usage_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("nst: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _store_is_empty(store: str) -> bool:
    client = MlflowClient(store)
    return all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


@pytest.mark.parametrize(
    ("kind", "needle"),
    [("missing", "no such file"), ("directory", "is a directory"), ("empty", "empty"),
     ("truncated", "corrupt or truncated"), ("text", "not an image"), ("1x1", "too small"),
     ("bomb", "decompression bomb")],
)
def test_bad_images(tmp_path, store, capsys, monkeypatch, kind, needle) -> None:
    monkeypatch.setattr("nst.images.MAX_PIXELS", 1_000_000)  # the 3000x3000 "bomb" is 9 Mpx
    path = _bad_file(tmp_path, kind)
    _expect_usage_error(capsys, ["run", "--content", str(path), "--style", STYLE, "--tracking-uri", store,
                                 "--quiet"], str(path), needle)
    assert _store_is_empty(store)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("optimizer.lrr=1", "did you mean 'optimizer.lr'"),
        ("optimizer.lr=fast", "optimizer.lr: input should be a valid number, unable to parse string as a number, "
                              "got 'fast'"),
        ("optimizer.lr=-0.1", "optimizer.lr must be > 0"),
        ("iterations=-5", "iterations must be > 0"),
        ("size=0", "size must be within 1..4096"),
        ("size=100000", "size must be within 1..4096"),
        ("layers.content=[relu9_2]", "unknown VGG-19 layer 'relu9_2'"),
        ("optimizer.name=rmsprop", "optimizer.name: input should be 'adam', 'lbfgs' or 'sgd'"),
        ("device=tpu", "device: input should be 'auto', 'cpu' or 'cuda', got 'tpu'"),
        ("optimizer.lr", "expected key=value"),
        ("style_blend=[0.5, 0.3, 0.2]", "style_blend has 3 weights for 1 style images"),
        ("scales=[128, 8192]", "scales end at 8192 px, above the run's size"),
        ("scales=fine", "scales: input should be 'auto', got 'fine'"),
        ("preserve_color=sepia", "preserve_color: input should be 'none', 'luminance' or 'match'"),
        ("gram_norm=frobenius", "gram_norm: input should be 'seed', 'hw' or 'chw'"),
        ("stop.window=0", "stop.window must be > 0"),
    ],
)
def test_bad_settings(unmade_store, capsys, setting, needle) -> None:
    argv = ["run", "--content", STYLE, "--style", STYLE, "--set", setting, "--tracking-uri", unmade_store]
    _expect_usage_error(capsys, argv, needle)
    assert not Path(unmade_store.removeprefix("sqlite:///")).exists()


def test_a_pyramid_starting_too_small_for_vgg(store, capsys) -> None:
    argv = ["run", "--content", STYLE, "--style", STYLE, "--set", "scales=[16, 64]", "--tracking-uri", store]
    _expect_usage_error(capsys, argv, "at 16 px the content is 13 px on its short side")
    assert _store_is_empty(store)  # checked with the images, before any run exists


def test_yaml_syntax_error_names_the_line(tmp_path, store, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("size: 64\noptimizer: {lr: 0.1\n")
    _expect_usage_error(capsys, ["run", "--config", str(config), "--tracking-uri", store],
                        str(config), "line 3", "YAML syntax error")


@pytest.mark.parametrize(
    ("grid", "needle"),
    [("grid: {}\n", "nothing varies"), ("zip:\n  alpha: [1, 2]\n  beta: [1]\n", "equal lengths")],
)
def test_bad_experiment_files(tmp_path, store, capsys, grid, needle) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: t\nbase:\n  content: {STYLE}\n  style: {STYLE}\n{grid}")
    _expect_usage_error(capsys, ["experiment", str(path), "--tracking-uri", store], str(path), needle)


@pytest.mark.parametrize("value", ["proces", "process:0", "thread:many"])
def test_a_bad_writer_setting(store, capsys, monkeypatch, value) -> None:
    monkeypatch.setenv("NST_WRITER", value)
    argv = ["run", "--content", STYLE, "--style", STYLE, "--set", "size=32", "--set", "iterations=2",
            "--tracking-uri", store]
    _expect_usage_error(capsys, argv, f"NST_WRITER={value!r}", "'thread' or 'process'", "'process:2'")
    assert _store_is_empty(store)


def test_unreachable_tracking_server_answers_fast(capsys) -> None:
    start = time.monotonic()
    _expect_usage_error(capsys, ["run", "--content", STYLE, "--style", STYLE, "--tracking-uri",
                                 "http://127.0.0.1:9"], "unreachable", "make server")
    assert time.monotonic() - start < 10


def test_unwritable_store_folder(tmp_path, capsys) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    _expect_usage_error(capsys, ["run", "--content", STYLE, "--style", STYLE, "--tracking-uri",
                                 f"sqlite:///{blocker}/mlflow.db"], "not writable", str(blocker))


def test_a_full_disk_is_recognized_however_it_is_said(tmp_path) -> None:
    from mlflow.exceptions import MlflowException

    from pipelines.tracking.space import no_space, store_full

    assert no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert no_space(MlflowException("(sqlite3.OperationalError) database or disk is full"))
    assert no_space('FAILED: could not extend file "base/16384/2619": No space left on device')  # PostgreSQL's
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.png"))
        except OSError as exc:
            raise RuntimeError("the writer failed") from exc
    except RuntimeError as chained:
        assert no_space(chained)
        assert str(store_full(f"sqlite:///{tmp_path}/store/mlflow.db", chained)).startswith(
            f"no space left on the device ({tmp_path}: ")  # where it ran out: beside the store
        assert str(store_full(f"sqlite:///{tmp_path}/mlflow.db", chained)).startswith(
            f"no space left in the store sqlite:///{tmp_path}/mlflow.db ({tmp_path}: ")
    assert not no_space(OSError(errno.EACCES, "Permission denied")) and not no_space(None)
    line = str(store_full("http://tracking:5000"))
    assert "its server's disk is full; ask its admin" in line and "\n" not in line


def test_a_full_disk_outside_the_store_is_one_line(tmp_path, store, capsys, monkeypatch) -> None:
    """A write nst makes beside the store (here `--out`; a report's figures) on a full disk."""
    save = Image.Image.save

    def full(self, path, *args, **kwargs):
        if str(path).endswith(".part"):  # --out's file, written whole: beside it, then renamed
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out" / "stylized.png"
    _expect_usage_error(capsys, ["run", "--content", STYLE, "--style", STYLE, "--set", "size=32", "--set",
                                 "iterations=2", "--tracking-uri", store, "--quiet", "--out", str(out)],
                        f"no space left on the device ({out.parent}: ", "free): free some space there")


def test_a_path_outside_the_project_is_allowed_and_reported(tmp_path, store, capsys, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (48, 48), (10, 120, 200)).save(outside)
    code = main(["run", "--content", STYLE, "--style", STYLE, "--set", f"content={outside}", "--set", "size=32",
                 "--set", "iterations=2", "--tracking-uri", store, "--quiet"])
    assert code == 0
    assert f"note: content resolves to {outside}, outside the project folder" in capsys.readouterr().err


_TORCH_LOADED = "import sys; from pipelines.cli import main; print(main(sys.argv[1:]), 'torch' in sys.modules)"


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "key", "experiment"])
def test_a_typo_is_answered_before_torch_loads(tmp_path, kind) -> None:
    # torch, Lightning and MLflow take 5-6 s to load here: a mistyped path or key is answered without them.
    missing = tmp_path / "nope.jpg"
    photo = {"missing": missing, "key": IMAGES / "grace_hopper.jpg", "experiment": missing}.get(kind)
    photo = photo or _bad_file(tmp_path, kind)
    argv = ["run", "--content", str(photo), "--style", STYLE, "--set", "sizee=3" if kind == "key" else "size=32"]
    if kind == "experiment":
        path = tmp_path / "typo.yaml"
        path.write_text(f"name: typo\nbase: {{content: {missing}, style: {STYLE}, size: 32}}\n"
                        "grid: {optimizer.lr: [0.1, 1.0]}\n")
        argv = ["experiment", str(path)]
    done = subprocess.run([sys.executable, "-c", _TORCH_LOADED, *argv], capture_output=True, text=True,
                          cwd=IMAGES.parents[1], timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr  # exit status 2, torch never loaded
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("nst: error: ")
    assert ("did you mean 'size'" if kind == "key" else str(photo)) in done.stderr
