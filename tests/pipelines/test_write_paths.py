"""Every place a command writes (below featurize's --out, tune's --storage, export's --out, report's --out and
--plots, train's --out, the MLflow SQLite folder) that is read-only or not a folder is one line naming it, before
anything is written and before Ray starts: the one check in pipelines.paths. Root writes through permission
bits, so a real read-only place is a read-only tmpfs mount (skipped where mounting is not allowed), and the other
case is a regular file in the way."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dept.clip import file_sha256
from pipelines.cli import main
from pipelines.paths import HolderLock, PathError, check_writable_folder
from pipelines.store import model_store_url
from pipelines.tracking.client import Tracker, TrackingError, check_tracking_uri


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _mount(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """make(path, *folders): ``path`` becomes a read-only tmpfs mount holding the (empty) ``folders``."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mounted = []

    def make(path, *folders):
        path.mkdir(parents=True, exist_ok=True)
        if not _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)]):
            pytest.skip("this machine does not let tests mount a tmpfs")
        mounted.append(path)
        for f in folders:
            (path / f).mkdir(parents=True)
        assert _mount(["-o", "remount,ro", str(path)])
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def test_a_writable_folder_passes_and_nothing_is_left(tmp_path):
    check_writable_folder(tmp_path / "new" / "deeper", "--out")
    assert os.listdir(tmp_path) == []


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    for where in (tmp_path / "afile", tmp_path / "afile" / "below" / "deeper"):
        with pytest.raises(PathError) as err:
            check_writable_folder(where, "--out")
        assert str(err.value) == f"--out {where}: {tmp_path / 'afile'} is not a folder"


def test_a_read_only_mount_is_named(tmp_path, read_only):
    ro = read_only(tmp_path / "ro", "inside")
    for where in (ro, ro / "inside", ro / "new" / "deeper"):
        with pytest.raises(PathError) as err:
            check_writable_folder(where, "--storage")
        probe = ro / "inside" if where == ro / "inside" else ro
        assert str(err.value) == f"--storage {where}: folder {probe} is not writable (Read-only file system)"
    with pytest.raises(PathError) as err:  # whoever skipped the check still gets one line
        HolderLock(ro / "exp" / ".lock").acquire()
    assert str(err.value).startswith(f"lock file {ro / 'exp' / '.lock'}: cannot be created (Read-only file system)")


def test_mlflow_sqlite_folder(tmp_path, read_only):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TrackingError, match=re.escape(f"folder {tmp_path / 'afile'} is not a folder")):
        check_tracking_uri(f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mlruns").write_text("x")  # where the artifacts go
    with pytest.raises(TrackingError, match=re.escape(f"{tmp_path / 'w' / 'mlruns'} is not a folder")):
        check_tracking_uri(f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}")
    ro = read_only(tmp_path / "ro")
    uri = f"sqlite:///{ro / 'mlflow.db'}"
    with pytest.raises(TrackingError) as err:
        check_tracking_uri(uri)
    assert str(err.value) == f"MLflow tracking URI {uri}: folder {ro} is not writable (Read-only file system)"


@pytest.fixture(scope="module")
def featurize_args(tiny_clip_checkpoint, tmp_path_factory):
    from dept.datasets import write_demo_dataset

    data = write_demo_dataset(tmp_path_factory.mktemp("data") / "demo", num_classes=2, train_per_class=2,
                              val_per_class=1, test_per_class=1, image_size=32)
    return ["featurize", "--dataset-dir", data, "--model", "dept-tiny-vit", "--pretrained", tiny_clip_checkpoint,
            "--views", "1", "--shots", "1", "--seeds", "1", "--no-progress"]


def _dataset_folder(out, checkpoint) -> str:
    return os.path.join(model_store_url(str(out), "dept-tiny-vit", "sha256:" + file_sha256(checkpoint)), "demo")


def test_featurize_below_out(featurize_args, tiny_clip_checkpoint, tmp_path, read_only):
    """--out itself is writable; the model or dataset folder below it is not: one line, nothing written, no Ray."""
    import ray

    ray_before = ray.is_initialized()  # the session's cluster, when a Ray test ran before in this process
    out = tmp_path / "features"
    folder = _dataset_folder(out, tiny_clip_checkpoint)
    os.makedirs(os.path.dirname(folder))
    open(folder, "w").close()  # a file where the dataset's folder goes
    line = one_line(run_cli(*featurize_args, "--out", out))
    assert line == f"error: --out {folder}: {folder} is not a folder"
    os.remove(folder)

    read_only(Path(folder))
    line = one_line(run_cli(*featurize_args, "--out", out))
    assert line == f"error: --out {folder}: folder {folder} is not writable (Read-only file system)"
    assert os.listdir(folder) == []
    assert ray.is_initialized() == ray_before


def test_export_report_and_train_outputs(tmp_path, read_only):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "dept")  # a store to read from
    (tmp_path / "afile").write_text("x")
    ro = read_only(tmp_path / "ro", "empty")

    line = one_line(run_cli("export", "--run-id", "0" * 32, "--out", ro / "state", "--mlflow-uri", uri))
    assert line == f"error: --out {ro / 'state'}: folder {ro} is not writable (Read-only file system)"
    line = one_line(run_cli("export", "--run-id", "0" * 32, "--out", ro / "empty", "--mlflow-uri", uri))
    assert line == f"error: --out {ro / 'empty'}: folder {ro / 'empty'} is not writable (Read-only file system)"

    line = one_line(run_cli("report", "--mlflow-uri", uri, "--plots", ro / "figures"))
    assert line == f"error: --plots {ro / 'figures'}: folder {ro} is not writable (Read-only file system)"
    for command in (["report", "--mlflow-uri", uri], ["train", "--features", tmp_path, "--dataset", "demo"]):
        line = one_line(run_cli(*command, "--out", ro / "table.md"))
        assert line == f"error: --out {ro / 'table.md'}: folder {ro} is not writable (Read-only file system)"
        line = one_line(run_cli(*command, "--out", tmp_path))
        assert line == f"error: --out {tmp_path}: {tmp_path} is a folder"


@pytest.mark.slow
def test_tune_storage_below_the_root_and_mlflow_folder(demo_store, tmp_path, read_only):
    """--storage is writable, the experiment's folder below it is read-only or a file; the MLflow folder is
    read-only: one line each, before Ray starts (a fresh process: no Ray of the test session) and before any
    MLflow record."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "tune"
    storage.mkdir()
    (storage / "afile").write_text("x")
    ro = read_only(storage / "ro")
    below = read_only(storage / "exp" / "demo")  # the experiment's folder takes files, the dataset's Tune folder not
    env = {**os.environ, "RAY_ADDRESS": ""}

    def tune(experiment, mlflow_uri=uri):
        cmd = [sys.executable, "-c", "from pipelines.cli import main; main()", "tune", "--features", demo_store, "--dataset", "demo",
               "--storage", storage, "--experiment", experiment, "--mlflow-uri", mlflow_uri]
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        return lines[0]

    assert tune("afile") == f"error: --storage {storage}: {storage / 'afile'} is not a folder"
    assert tune("ro") == f"error: --storage {storage}: folder {ro} is not writable (Read-only file system)"
    assert tune("exp") == f"error: --storage {storage}: folder {below} is not writable (Read-only file system)"
    assert not (tmp_path / "mlflow.db").exists()
    ro_uri = f"sqlite:///{ro / 'mlflow.db'}"
    assert tune("x", ro_uri) == (f"error: MLflow tracking URI {ro_uri}: folder {ro} is not writable "
                                 "(Read-only file system)")
