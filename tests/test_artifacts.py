"""The typed directories (`vrp.artifacts`): what a run's latest checkpoint is, how a run's adapter and prompt settings
are found, the dataset fingerprint, the collect dir's files and a report dir's clean-up."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vrp.artifacts import CollectDir, DatasetDir, ReportDir
from vrp.errors import ConfigError, VrpError
from vrp.records import Comment, Video
from vrp.rundir import RunDir


def make_run(path: Path, steps: tuple[int, ...] = (2, 4), incomplete: tuple[int, ...] = (6,)) -> RunDir:
    """A run dir with complete checkpoints `steps` (adapter + state.json) and `incomplete` ones (adapter only)."""
    run = RunDir(path)
    path.mkdir(parents=True)
    run.config_path.write_text("model: some/model\nmax_prompt_tokens: 300\ntruncation: head_tail\n")
    for step in steps + incomplete:
        (run.checkpoint_dir(step) / "adapter").mkdir(parents=True)
        if step in steps:
            (run.checkpoint_dir(step) / "state.json").write_text(json.dumps({"step": step}))
    return run


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert [p.name for p in run.checkpoints()] == ["step-000002", "step-000004"]
    assert run.latest_checkpoint() == run.checkpoint_dir(4)           # not step-000006: it has no state.json
    assert run.adapter("latest") == run.checkpoint_dir(4) / "adapter"
    assert run.adapter("step-000002") == run.checkpoint_dir(2) / "adapter"
    assert run.checkpoint_state(run.latest_checkpoint()) == {"step": 4}
    with pytest.raises(ConfigError, match=r"checkpoint: step-000006 not found .* available: \['step-000002', "
                                          r"'step-000004', 'latest'\]"):
        run.adapter("step-000006")
    with pytest.raises(ConfigError, match=r"run: .* has no adapter/ \(training not finished\?\)"):
        run.adapter()
    assert RunDir(tmp_path / "empty").latest_checkpoint() is None


def test_named_checkpoints_are_one_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path / "run")
    monkeypatch.setitem(RunDir.NAMED_CHECKPOINTS, "first", lambda r: r.checkpoints()[0])
    assert run.adapter("first") == run.checkpoint_dir(2) / "adapter"


def test_run_config_is_read_once_and_gives_model_and_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vrp.rundir

    run = make_run(tmp_path / "run")
    reads: list[str] = []
    load_yaml = vrp.rundir.load_yaml
    monkeypatch.setattr(vrp.rundir, "load_yaml", lambda p: reads.append(str(p)) or load_yaml(p))
    assert run.model_spec() == "some/model"
    p = run.prompt_config()
    assert (p.max_prompt_tokens, p.truncation) == (300, "head_tail")
    assert run.prompt_config(64).max_prompt_tokens == 64
    assert len(reads) == 1
    with pytest.raises(ConfigError, match="run: .*nope is not a vrp run directory"):
        RunDir(tmp_path / "nope").model_spec()
    (run.config_path).write_text("model: some/model\nmax_prompt_tokens: lots\n")
    with pytest.raises(VrpError, match="config.yaml: option 'max_prompt_tokens' must be an integer"):
        RunDir(run.path).prompt_config()


def test_history_skips_a_torn_last_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    run.history_path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5, "val_nll": 1.9}\n{"step": 3, "lo')
    assert [h["step"] for h in run.history()] == [1, 2]
    assert run.metrics() is None and RunDir(tmp_path / "x").history() == []


def test_run_target_checks(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="out: .* pass `resume` to continue it or `overwrite` to start over"):
        run.check_target(resume=False, overwrite=False)
    run.check_target(resume=True, overwrite=False)
    with pytest.raises(ConfigError, match="resume: .* has no run to resume"):
        RunDir(tmp_path / "new").check_target(resume=True, overwrite=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="resume: .* is not a vrp run directory"):
        RunDir(tmp_path / "other").check_target(resume=True, overwrite=False)
    run.create(resume=False, overwrite=True)
    assert run.path.is_dir() and not any(run.path.iterdir())


def test_dataset_fingerprint_follows_the_split_files(tmp_path: Path) -> None:
    a, b = DatasetDir(tmp_path / "a"), DatasetDir(tmp_path / "b")
    videos = [Video("v1", "t", "x", [Comment("c")]), Video("v2", "t", "y", [Comment("d")])]
    a.write(videos[:1], videos[1:], {"n": 1})
    b.write(videos[:1], videos[1:], {"n": 2})                       # the manifest is not part of the data
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    b.write(videos, [], {"n": 2})
    assert a.fingerprint() != b.fingerprint()
    assert [v.video_id for v in a.train_videos()] == ["v1"] and [v.video_id for v in a.validation_videos()] == ["v2"]
    with pytest.raises(ConfigError, match="data: .*none has no train.jsonl; run `vrp prepare` first"):
        DatasetDir(tmp_path / "none").train_videos()
    (tmp_path / "mine.csv").write_text("title,transcript,comment\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mine.csv is a file, not a dataset dir; make one with `vrp prepare"):
        DatasetDir(tmp_path / "mine.csv").train_videos()


def test_collect_dir_files(tmp_path: Path) -> None:
    d = CollectDir(tmp_path / "c")
    with d.lock("vrp collect"):
        d.append_video({"id": "AAAAAAAAAAA"})
        d.append_skipped({"id": "BBBBBBBBBBB", "reason": "private", "permanent": True})
        d.append_skipped({"id": "BBBBBBBBBBB", "reason": "rate_limited", "permanent": False})
        d.write_summary({"stats": {"collected": 1}})
    assert d.exists() and d.done_ids() == {"AAAAAAAAAAA"}
    assert d.skipped()["BBBBBBBBBBB"]["reason"] == "rate_limited"   # the last record of an id counts
    assert json.loads((d.path / "collect.json").read_text())["stats"]["collected"] == 1


def test_report_dir_removes_only_its_own_previous_files(tmp_path: Path) -> None:
    r = ReportDir(tmp_path / "rep")
    r.path.mkdir()
    for name in ("report.md", "a.png", "keep.txt", "b.png"):
        (r.path / name).write_text("x")
    (r.path / "metrics.json").write_text(json.dumps({"files": ["report.md", "metrics.json", "a.png", "keep.txt"]}))
    with pytest.raises(ConfigError, match="out: .* is not empty; pass `overwrite` to replace the report in it"):
        r.check_new(overwrite=False)
    r.check_new(overwrite=True)
    r.remove_previous()
    assert sorted(p.name for p in r.path.iterdir()) == ["b.png", "keep.txt"]


def test_overwrite_replaces_only_a_recognisable_output_that_holds_no_input(tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"out: .*other is not empty and is not a run directory \(no config.yaml "
                                          r"or checkpoints\); choose another directory$"):
        RunDir(other).check_target(resume=False, overwrite=False)
    with pytest.raises(ConfigError, match=r"out: .*other is not a run directory .* it will not be deleted"):
        RunDir(other).create(resume=False, overwrite=True)
    with pytest.raises(ConfigError, match=r"out: .*other is not a dataset directory .* it will not be deleted"):
        DatasetDir(other).check_new(overwrite=True)
    (other / "metrics.json").write_text(json.dumps({"steps": 2}))  # a run's metrics.json is not a report's
    with pytest.raises(ConfigError, match=r"out: .*other is not a report directory"):
        ReportDir(other).check_new(overwrite=True)
    assert (other / "precious.txt").read_text() == "x"

    run = make_run(tmp_path / "run")
    (run.path / "data").mkdir()
    with pytest.raises(ConfigError, match=r"out: .*run is or holds an input of the command, `data` .* will not be deleted"):
        run.create(resume=False, overwrite=True, inputs=[("data", run.path / "data"), ("model", "smollm2-135m")])
    monkeypatch.chdir(run.path / "data")
    with pytest.raises(ConfigError, match=r"out: .*run is the current directory or holds it"):
        run.create(resume=False, overwrite=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(run.path))
    with pytest.raises(ConfigError, match=r"out: .*run is the filesystem root or the home directory"):
        run.create(resume=False, overwrite=True)
    assert run.latest_checkpoint() == run.checkpoint_dir(4)  # nothing was deleted
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run.create(resume=False, overwrite=True, inputs=[("data", tmp_path / "ds")])
    assert run.path.is_dir() and not any(run.path.iterdir()) and list(tmp_path.glob(".run.old-*")) == []


@pytest.mark.slow
def test_train_overwrite_of_its_own_data_dir_deletes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    from helpers import one_line_error

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text("")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(ds), "--overwrite"], "error: --out: ",
                   "is or holds an input of the command, --data", "will not be deleted")
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "notes.txt").write_text("x")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "notrun"), "--overwrite"],
                   "error: --out: ", "notrun is not a run directory (no config.yaml or checkpoints); it will not be "
                                     "deleted")
    monkeypatch.chdir(ds)
    (ds / "config.yaml").write_text("model: x\n")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "ds"), "--out", ".", "--overwrite"],
                   "error: --out: . is the current directory or holds it")
    assert sorted(p.name for p in ds.iterdir()) == ["config.yaml", "train.jsonl"]


def test_prepare_overwrite_never_replaces_its_own_input(tmp_path: Path, capsys) -> None:
    from helpers import one_line_error

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text("")
    (ds / "manifest.json").write_text("{}")
    one_line_error(capsys, ["prepare", str(ds), "--out", str(ds), "--overwrite"],
                   "error: --out: ", "is or holds an input of the command, input (")
    assert sorted(p.name for p in ds.iterdir()) == ["manifest.json", "train.jsonl"]
