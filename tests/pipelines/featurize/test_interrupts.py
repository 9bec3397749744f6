"""Real SIGINT and SIGTERM sent to a real ``dept-pipeline featurize`` process mid-way: exit 130 / 143, one line
with the command that resumes, no click "Aborted!", no native crash dump; that command, run as printed, skips the
shards already finished and completes the store."""
from __future__ import annotations

import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dept.clip import file_sha256
from dept.datasets import write_demo_dataset
from pipelines.featurize.encode import ENCODE_PAUSE_ENV
from pipelines.store import MANIFEST, model_store_url, read_manifest
from tests.conftest import TINY_MODEL

#: What a crash, a native abort or click's own Ctrl-C handling would print.
CRASH_TEXT = ("Aborted!", "SIGABRT", "Fatal Python error", "Stack trace", "*** ", "Traceback", "core dumped")
HINT = "; the shards finished so far are kept, resume with: "


def _cli(args):
    return [sys.executable, "-c", "from pipelines.cli import main; main()", *args]


@pytest.mark.slow
def test_sigint_and_sigterm_stop_featurize_cleanly_and_the_printed_command_resumes(ray_cluster, tiny_clip_checkpoint,
                                                                                    tmp_path):
    data = write_demo_dataset(tmp_path / "demo", num_classes=4, train_per_class=2, val_per_class=2,
                              test_per_class=6, image_size=32)
    out = tmp_path / "features"
    args = ["featurize", "--dataset-dir", str(data), "--out", str(out), "--model", TINY_MODEL, "--pretrained",
            str(tiny_clip_checkpoint), "--views", "1", "--shots", "1", "--seeds", "1", "--images-per-shard", "2",
            "--batch-size", "2", "--no-progress", "--ray-address", ray_cluster.address]
    url = model_store_url(str(out), TINY_MODEL, "sha256:" + file_sha256(tiny_clip_checkpoint))
    total = (4 + 8 + 24) // 2  # train 1 shot x 4 classes, val 8, test 24 images; 2 images per shard

    def shards() -> int:
        return len(glob.glob(os.path.join(url, "demo", "part-*.parquet")))

    env = {**os.environ, ENCODE_PAUSE_ENV: "1"}  # an encoder call of a second: the run is mid-way for a while
    command = None
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        before = shards()
        log = tmp_path / f"{signum.name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(_cli(args), cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while shards() <= before:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, "no new shard within 300 s"
                time.sleep(0.1)
            proc.send_signal(signum)
            assert proc.wait(timeout=120) == code, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        text = log.read_text()
        assert not [t for t in CRASH_TEXT if t in text], text[-3000:]
        hints = [line for line in text.splitlines() if line.startswith("interrupted (")]
        assert len(hints) == 1, text[-3000:]
        assert hints[0].startswith(f"interrupted ({signum.name}){HINT}"), hints[0]
        command = hints[0].split(HINT, 1)[1]
        # The program as the shell reaches it (the bare name, or its path when the venv is not activated), then the
        # same arguments: featurize resumes by itself.
        words = shlex.split(command)
        assert words[0].endswith("dept-pipeline") or words[1:3] == ["-m", "pipelines.cli"], command
        assert words[words.index("featurize"):] == args
        assert 0 < shards() < total, "the signal did not land mid-way"
        assert json.loads((Path(url) / "demo" / MANIFEST).read_text())["complete"] is False

    done = shards()
    words = shlex.split(command)
    final = subprocess.run(_cli(words[words.index("featurize"):]), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"{done} shards already done" in final.stdout  # the interrupted runs' shards were kept, not redone
    manifest = read_manifest(url, "demo")
    assert manifest.complete and manifest.rows == {"train": 8, "val": 8, "test": 24}
    assert shards() == total
