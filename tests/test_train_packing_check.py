"""The shared-prefix self-check of a training run (`vrp.train.packing_check`): recorded in metrics.json when the
masks are exact, and a run whose masks are wrong stops before training with a message and nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_config, write_splits

import vrp.packing
from vrp.errors import VrpError
from vrp.packing import Row
from vrp.records import Comment, Video
from vrp.train.loop import train
from vrp.train import packing_check
from vrp.train.packing_check import CHECK_COMMENTS, TOLERANCE, check_rows


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """Three training videos of 3-5 comments (rows of several comments) and one validation video."""
    texts = ["great video", "i love this song", "first!", "so helpful thanks", "what camera is that", "lol"]
    train_v = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * 6, [Comment(t) for t in texts[:3 + i]])
               for i in range(3)]
    val = [Video("val0", "t", "held out " * 6, [Comment("nice one"), Comment("cool")])]
    return write_splits(tmp_path / "data", train_v, val)


def test_check_rows_pick_the_fullest_rows(monkeypatch):
    rows = [Row([1, 2], [[3]], "a"), Row([1], [[3], [4], [5], [6], [7], [8]], "b", [[9]] * 6),
            Row([1, 2, 3], [[3], [4]], "c"), Row([1, 2, 3, 4], [[3], [4]], "d")]
    assert [r.video_id for r in check_rows(rows)] == ["b"]  # by default one row (four forward passes)
    monkeypatch.setattr(packing_check, "CHECK_ROWS", 2)
    picked = check_rows(rows)
    assert [(r.video_id, len(r.completions), len(r.contexts)) for r in picked] == [("b", CHECK_COMMENTS,
                                                                                   CHECK_COMMENTS), ("d", 2, 0)]
    assert len(rows[1].completions) == 6  # the run's own rows are left as they are


@pytest.mark.slow
def test_run_records_packing_check(tmp_path: Path, data: Path, tiny_model_dir: Path) -> None:
    m = train(tiny_train_config(tiny_model_dir, batch_size=2, max_steps=1), data, tmp_path / "run", progress=False)
    check = json.loads((tmp_path / "run" / "metrics.json").read_text())["packing_check"]
    assert check == m["packing_check"]
    assert check["dtype"] == "float32" and check["tolerance"] == TOLERANCE["float32"] == 1e-3
    assert check["precision"] == "cpu-fp32"
    # the fullest row (5 comments) cut to CHECK_COMMENTS; every comment token (EOS included) is compared
    assert check["n_comments"] == CHECK_COMMENTS == 3 and check["n_tokens"] > check["n_comments"]
    assert 0.0 <= check["max_abs_diff"] < 1e-5  # exact masks: fp32 rounding only


@pytest.mark.slow
def test_wrong_mask_stops_the_run_before_training(tmp_path: Path, data: Path, tiny_model_dir: Path,
                                                  monkeypatch) -> None:
    """A mask that lets each comment see the comments before it (all comments one segment) is caught."""
    right = vrp.packing.shared_prefix_mask
    monkeypatch.setattr(vrp.packing, "shared_prefix_mask", lambda seg: right(torch.where(seg > 0, 1, seg)))
    run = tmp_path / "run"
    with pytest.raises(VrpError, match=r"packing check failed for model type 'llama': the log-probs of \d+ comment "
                                       r"tokens in shared-prefix rows differ from the per-example forward by up to "
                                       r"\S+ nats \(tolerance 0.001 at float32\).*packing mode 'none'"):
        train(tiny_train_config(tiny_model_dir, batch_size=2, max_steps=1), data, run, progress=False)
    assert not run.exists()  # stopped before the run dir was created
    m = train(tiny_train_config(tiny_model_dir, batch_size=2, max_steps=1, packing="none"), data, run, progress=False)
    assert m["packing_check"] is None and m["steps"] == 1  # packing none: no shared-prefix training rows to check
