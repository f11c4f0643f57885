"""One writer per output directory (`vrp.locks.DirLock`): a second writer is refused naming the first, a lock left
by a killed process does not block, and every command that writes a directory takes it (`vrp train` with
`resume` or `overwrite`, `vrp prepare`, `vrp evaluate`, `vrp collect` in tests/test_collect_fetch.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import one_line_error, write_seed_xlsx

from vrp.errors import ConfigError
from vrp.locks import LOCK_NAME, DirLock
from vrp.rundir import RunDir

HOLD = textwrap.dedent("""
    import sys, time
    from vrp.locks import DirLock
    lock = DirLock(sys.argv[1], "vrp train")
    lock.acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def hold_in_child(path: Path) -> subprocess.Popen:
    """A child process holding the lock of `path` (as a running `vrp train` would) until it is killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_process_is_refused_and_a_killed_holder_blocks_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    child = hold_in_child(run)
    try:
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["pid"] == child.pid and info["command"] == "vrp train"
        with pytest.raises(ConfigError, match=rf"out: .*run: another `vrp train` \(pid {child.pid}, since .*\) is "
                                              rf"writing to this directory"):
            DirLock(run, "vrp train").acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert (run / LOCK_NAME).exists()  # a killed holder leaves its lock file behind ...
    with DirLock(run, "vrp prepare") as lock:  # ... which blocks nothing: the kernel dropped its flock
        assert lock.held and json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert run.is_dir() and not any(run.iterdir())  # released: the lock file is gone, the child's dir stays


def test_a_lock_removes_the_dir_it_created_only_when_nothing_was_written(tmp_path: Path) -> None:
    with DirLock(tmp_path / "new", "vrp prepare"):
        assert (tmp_path / "new" / LOCK_NAME).is_file()
        assert RunDir(tmp_path / "new").is_nonempty() is False  # a lock file alone is no content
    assert not (tmp_path / "new").exists()  # a failed start leaves nothing behind
    with DirLock(tmp_path / "kept", "vrp prepare"):
        (tmp_path / "kept" / "train.jsonl").write_text("")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["train.jsonl"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="out: .*file exists and is not a directory"):
        DirLock(tmp_path / "file", "vrp train").acquire()
    with pytest.raises(ConfigError, match=r"out: cannot write .*file/run \(.*file is a file, not a directory\)"):
        DirLock(tmp_path / "file" / "run", "vrp train").acquire()
    held = DirLock(tmp_path / "x", "vrp train")
    held.acquire()
    (tmp_path / "x" / LOCK_NAME).unlink()  # removed under a holder: a newcomer locks the new file, not a ghost
    with DirLock(tmp_path / "x", "vrp prepare") as other:
        assert other.held
    held.release()
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_train_refuses_a_second_writer_with_one_line(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from helpers import write_splits

    from vrp.records import Comment, Video

    videos = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * 5, [Comment(f"comment {i}")]) for i in range(3)]
    data = write_splits(tmp_path / "data", videos[:2], videos[2:])
    run = tmp_path / "run"
    common = ["--data", str(data), "--out", str(run), "--model", str(tiny_model_dir), "--precision", "fp32",
              "--max-prompt-tokens", "64", "--max-row-tokens", "256", "--lora-r", "2", "--curve-videos", "0"]
    from vrp.cli import main

    assert main(["train", *common, "--max-steps", "2", "--save-every", "1", "--lr-scheduler", "constant"]) == 0
    capsys.readouterr()
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    child = hold_in_child(run)  # a training that is still writing this run dir
    try:
        for extra in (["--resume", "--max-steps", "3"], ["--overwrite", "--max-steps", "2"]):
            line = one_line_error(capsys, ["train", *common[:4], *(common[4:] if "--overwrite" in extra else []),
                                           *extra], "error: --out: ", "another `vrp train`", f"pid {child.pid}")
            assert "is writing to this directory" in line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    after = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.name != LOCK_NAME}
    assert after == before  # nothing was read into, appended to or deleted
    assert main(["train", *common[:4], "--resume", "--max-steps", "3"]) == 0  # the killed holder blocks nothing
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3] and not (run / LOCK_NAME).exists()


def test_prepare_and_evaluate_refuse_a_dir_another_command_writes(tmp_path: Path, capsys) -> None:
    write_seed_xlsx(tmp_path / "seed.xlsx", n_videos=4)
    with DirLock(tmp_path / "ds", "vrp prepare"):
        one_line_error(capsys, ["prepare", str(tmp_path / "seed.xlsx"), "--out", str(tmp_path / "ds")],
                       "error: --out: ", "another `vrp prepare`", "is writing to this directory")
    assert not (tmp_path / "ds").exists()
    with DirLock(tmp_path / "report", "vrp evaluate"):  # refused before any model or data is read
        one_line_error(capsys, ["evaluate", "--data", str(tmp_path / "none"), "--model", "none", "--out",
                                str(tmp_path / "report")], "error: --out: ", "another `vrp evaluate`")


def test_generate_never_replaces_a_file_another_command_wrote_meanwhile(tmp_path: Path, capsys, monkeypatch) -> None:
    import vrp.generate.run
    from vrp.cli import main

    out, others = tmp_path / "p.csv", []

    def predict(videos, cfg):  # another `vrp generate --out p.csv` may finish while this one generates
        if others:
            out.write_text(others.pop())
        return [{"video_id": "v", "preset": "greedy", "comment": "mine"}]

    monkeypatch.setattr(vrp.generate.run, "predict", predict)
    others.append("the other command's predictions\n")
    one_line_error(capsys, ["generate", "--model", "m", "--transcript", "hello", "--out", str(out)],
                   f"error: --out: {out}: another command created it while this one ran; not replaced (pass "
                   f"--overwrite to replace it)")
    assert out.read_text() == "the other command's predictions\n" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]
    others.append("the other command's predictions\n")
    assert main(["generate", "--model", "m", "--transcript", "hello", "--out", str(out), "--overwrite"]) == 0
    assert "mine" in out.read_text()  # asked to replace: replaced
    out.unlink()
    assert main(["generate", "--model", "m", "--transcript", "hello", "--out", str(out)]) == 0
    assert "mine" in out.read_text()  # nobody else wrote it: created
