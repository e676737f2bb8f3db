"""One writer per output folder (edgerep.files.output_lock), between real processes.

The holder is a real `edgerep build` whose model factory (held_model, below) waits for a file the test never
writes, so it holds its folder's lock for as long as the test needs, without the minutes of a build; the
user's own scenario (two real builds into one folder) is the one slow test at the end.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_helpers import cli, error_line

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fcntl") is None,
                                reason="no fcntl (Windows): edgerep takes no output lock there")

LOCK = ".edgerep.lock"
ROOT = Path(__file__).resolve().parents[2]
HELD_MODEL = f"{__name__}:held_model"
SINCE = r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def held_model():
    """A model factory for `edgerep build --model tests.commands.test_output_lock:held_model`: it waits until the
    file named by EDGEREP_TEST_HOLD exists (at most 120 s), so the build holds its folder meanwhile."""
    import torch.nn as nn

    gate = os.environ.get("EDGEREP_TEST_HOLD")
    deadline = time.monotonic() + 120
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def edgerep(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m edgerep ARGS` as a user starts it in `cwd`, this checkout first on the path."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.Popen([sys.executable, "-m", "edgerep", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "300",
                                 **(env or {})})


def wait_for_lock(folder: Path, proc: subprocess.Popen, timeout: float = 90) -> dict:
    """The lock file's details once they name `proc` (which must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the holder ended ({proc.returncode}): {proc.communicate()[1]}"
        try:
            body = json.loads((folder / LOCK).read_text())
        except (OSError, ValueError):
            body = None
        if isinstance(body, dict) and body.get("pid") == proc.pid:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{folder / LOCK} never named pid {proc.pid}")


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder` (the lock file too): content hash and mtime."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_a_second_writer_stops_at_once_and_a_killed_holder_is_taken_over(tmp_path):
    same = tmp_path / "same"
    (same / "engines").mkdir(parents=True)
    # What an earlier run left: a report, a manifest, and a killed run's temporary that `build` would clean up
    # (stages.remove_stale_partials) if it got as far as preparing the folder.
    (same / "report.json").write_text('{"model": "the first one"}\n')
    (same / "stages.json").write_text("{}\n")
    (same / "engines" / f"model.fp32.xml.partial-{dead_pid()}").write_text("half")
    holder = edgerep("build", "--model", HELD_MODEL, "--input-shape", "1x3x8x8", "-o", "same", cwd=tmp_path,
                     env={"EDGEREP_TEST_HOLD": str(tmp_path / "never")})
    try:
        details = wait_for_lock(same, holder)
        assert details["command"] == f"edgerep build --model {HELD_MODEL} --input-shape 1x3x8x8 -o same"
        before = snapshot(same)

        # The second shell: another model into the same folder.
        t0 = time.monotonic()
        second = edgerep("build", "--model", "zoo:repyolo_digits", "-o", "same", cwd=tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert re.fullmatch(rf"error: same: in use by pid {holder.pid} \(`edgerep build --model {re.escape(HELD_MODEL)} "
                            rf"--input-shape 1x3x8x8 -o same`, {SINCE}\); wait for it or pass another -o", err.strip()), err
        assert holder.poll() is None, "the second run waited for the first instead of stopping"
        assert time.monotonic() - t0 < 60
        assert snapshot(same) == before  # nothing of the first run touched, its lock file included

        # Every other command that writes a folder stops the same way (here in this process).
        (tmp_path / "m.toml").write_text('targets = ["onnxruntime-cpu"]\n[[models]]\nname = "t"\nspec = "zoo:repvgg_tiny"\n')
        for argv in (["fuse", "--model", "zoo:repvgg_tiny"], ["export", "--model", "zoo:repvgg_tiny"],
                     ["sensitivity", "--model", "zoo:repvgg_tiny"], ["matrix", str(tmp_path / "m.toml")],
                     ["build", "--model", "zoo:repvgg_tiny"]):
            code, _, err = cli([*argv, "-o", str(same)])
            assert code == 2, (argv, err)
            assert error_line(err).startswith(f"error: {same}: in use by pid {holder.pid} (`edgerep build "), (argv, err)
        assert snapshot(same) == before

        # Killed: the kernel drops its flock, the file still names it; the next writer takes over with a note.
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert json.loads((same / LOCK).read_text())["pid"] == holder.pid
        code, _, err = cli(["fuse", "--model", "zoo:repvgg_tiny", "--input-shape", "1x3x32x32", "-o", str(same)])
        assert code == 0, err
        notes = [line for line in err.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and "Traceback" not in err, err
        assert re.fullmatch(rf"note: {re.escape(str(same))}: taking over the lock of pid {holder.pid} \(`edgerep build "
                            rf"--model {re.escape(HELD_MODEL)} --input-shape 1x3x8x8 -o same`, {SINCE}\), which no "
                            rf"longer runs", notes[0]), notes[0]
        assert (same / "fused.safetensors").is_file() and (same / "fuse_report.json").is_file()
        assert (same / "report.json").read_text() == '{"model": "the first one"}\n'
        assert not (same / LOCK).exists()  # released on the way out: no file left for anything that lists the folder
    finally:
        stop(holder)


TAKE = "import sys\nfrom edgerep.files.output_lock import output_lock\nwith output_lock(sys.argv[1]):\n    pass\n"


def test_this_process_holds_a_folder_against_another_and_lets_it_go(tmp_path):
    from edgerep.errors import UserError
    from edgerep.files.output_lock import output_lock

    same = tmp_path / "a" / "same"
    with output_lock(same):
        with output_lock(same):  # the build command, then the pipeline under it: one lock, taken once
            pass
        assert json.loads((same / LOCK).read_text())["pid"] == os.getpid()  # the inner block did not release it
        other = edgerep("fuse", "--model", "zoo:repvgg_tiny", "-o", str(same), cwd=tmp_path)
        _, err = other.communicate(timeout=120)
        assert other.returncode == 2 and "Traceback" not in err, err
        assert err.startswith(f"error: {same}: in use by pid {os.getpid()} (`") and len(err.strip().splitlines()) == 1, err
        (same / "result.txt").write_text("kept")
    # Released: the file is gone and the next process takes the folder without a note.
    assert sorted(p.name for p in same.iterdir()) == ["result.txt"]
    done = subprocess.run([sys.executable, "-c", TAKE, str(same)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # A run that fails before its first write releases too, and leaves no folder it made.
    fresh = tmp_path / "b" / "fresh"
    with pytest.raises(UserError), output_lock(fresh):
        assert (fresh / LOCK).is_file()
        raise UserError("refused before any write")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_two_real_builds_into_one_folder(tmp_path):
    """The issue's scenario: `edgerep build -o same`, then, while it runs, `edgerep build --model
    zoo:repyolo_digits -o same`. The second stops at once; the first finishes with its own report."""
    first = edgerep("build", "-o", "same", cwd=tmp_path)
    try:
        wait_for_lock(tmp_path / "same", first)
        second = edgerep("build", "--model", "zoo:repyolo_digits", "-o", "same", cwd=tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert re.fullmatch(rf"error: same: in use by pid {first.pid} \(`edgerep build -o same`, {SINCE}\); wait for "
                            rf"it or pass another -o", err.strip()), err
        assert first.poll() is None, "the second build waited for the first instead of stopping"
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
        assert "report: same/report.json" in out
        report = json.loads((tmp_path / "same" / "report.json").read_text())
        assert report["model"]["spec"] == "zoo:repvgg_digits"
        assert not (tmp_path / "same" / LOCK).exists()
    finally:
        stop(first)
