"""The token cache (`vrp.token_cache`): built once and reused, rebuilt for another tokenizer, prompt setting or
dataset, rebuilt with a notice when damaged, never left looking complete after a failed build, and training through
it gives the same adapter as training without it (fresh and resumed)."""
from __future__ import annotations

import copy
import errno
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_config, write_splits

import vrp.token_cache as tc
from vrp.artifacts import DatasetDir
from vrp.errors import ConfigError, VrpError
from vrp.prompts import PromptConfig
from vrp.records import Comment, Video
from vrp.train.loop import train

PCFG = PromptConfig(max_prompt_tokens=64, prompt_format="chat")


def videos(n: int, tag: str = "v") -> list[Video]:
    """n videos of 2-4 comments with like counts (so tiers apply), transcripts longer than a 64-token prompt."""
    return [Video(f"{tag}{i}", f"title {i}", f"transcript of video {i} with many words " * 12,
                  [Comment(f"comment {k} on {tag}{i}", like_count=10 * k + i) for k in range(2 + i % 3)])
            for i in range(n)]


@pytest.fixture()
def data(tmp_path: Path) -> DatasetDir:
    write_splits(tmp_path / "data", videos(7), videos(3, "val"))
    return DatasetDir(tmp_path / "data")


SPLITS = ("train", "validation")


def cached(data: DatasetDir, tok, pcfg: PromptConfig = PCFG, tiers=None, train_limit: int = 0,
           progress: bool = False) -> tuple[list, list]:
    """Both splits read through the cache, as lists."""
    return tuple(list(tc.cached_split(data, s, train_limit if s == "train" else 0, tok, pcfg, tiers,
                                      progress=progress)) for s in SPLITS)


def plain(data: DatasetDir, tok, pcfg: PromptConfig = PCFG, tiers=None, train_limit: int = 0) -> tuple[list, list]:
    """Both splits encoded in memory (the uncached path)."""
    return tuple(list(tc.encode_split(tok, tc.split_videos(data, s, train_limit if s == "train" else 0), pcfg, tiers,
                                      s == "train")) for s in SPLITS)


def ids(data: DatasetDir, train_limit: int = 0) -> list[str]:
    return [v.video_id for s in SPLITS for v in data.videos(s, train_limit if s == "train" else 0)]


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the videos tokenized (every call of `vrp.token_cache._encode_one`)."""
    seen: list[str] = []
    real = tc._encode_one

    def counting(tokenizer, video, pcfg, tiers, train):
        seen.append(video.video_id)
        return real(tokenizer, video, pcfg, tiers, train)

    monkeypatch.setattr(tc, "_encode_one", counting)
    return seen


def cache_dirs(data: DatasetDir) -> list[Path]:
    root = data.path / tc.CACHE_DIR
    return sorted(p for p in root.iterdir() if p.name.startswith("tokens-") and p.is_dir()) if root.is_dir() else []


def train_cache(data: DatasetDir) -> Path:
    [cache] = [p for p in cache_dirs(data) if (p / "train-00000.arrow").is_file()]
    return cache


def test_built_once_then_reused_with_the_uncached_encodings(data: DatasetDir, tokenizer, calls, capsys) -> None:
    expected = plain(data, tokenizer)
    calls.clear()
    first = cached(data, tokenizer, progress=True)
    assert calls == ids(data)  # each video tokenized once
    err = capsys.readouterr().err
    assert "token cache: train" in err and "token cache (train): built" in err  # the progress bar, then what was done
    assert len(cache_dirs(data)) == 2  # one per split
    stamp = {p: p.stat().st_mtime_ns for c in cache_dirs(data) for p in c.iterdir()}
    calls.clear()
    second = cached(data, tokenizer, progress=True)
    assert calls == [] and "token cache (validation): reused" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for c in cache_dirs(data) for p in c.iterdir()} == stamp
    assert first == second == expected
    assert 56 <= max(len(v.prompt_ids) for v in first[0]) <= 64  # the transcripts were cut to the budget


def test_the_split_reads_videos_lazily_and_gives_lengths_without_lists(data: DatasetDir, tokenizer) -> None:
    split = tc.cached_split(data, "train", 0, tokenizer, PCFG, tc.TierSettings("likes", 0.5, 3), progress=False)
    expected = plain(data, tokenizer, tiers=tc.TierSettings("likes", 0.5, 3))[0]
    assert isinstance(split, tc.EncodedSplit) and len(split) == len(expected) == 7
    assert split[-1] == expected[-1] and split[2:4] == expected[2:4]
    with pytest.raises(IndexError, match="range"):
        split[7]
    assert list(split.lengths()) == [(e.video_id, len(e.prompt_ids), [len(c) for c in e.completions],
                                      [len(x) for x in e.contexts]) for e in expected]


@pytest.mark.parametrize("mode, max_row", [("none", 128), ("shared_prefix", 128), ("shared_prefix", 80)])
def test_rows_of_the_cached_split_collate_as_rows_of_lists(data: DatasetDir, tokenizer, mode: str,
                                                           max_row: int) -> None:
    from vrp.packing import LazyRow, Row, collate, make_rows

    tiers = tc.TierSettings("likes", 0.5, 3)
    lazy = make_rows(tc.cached_split(data, "train", 0, tokenizer, PCFG, tiers, progress=False), mode, max_row)
    eager = make_rows(plain(data, tokenizer, tiers=tiers)[0], mode, max_row)
    assert all(isinstance(r, LazyRow) for r in lazy) and all(isinstance(r, Row) for r in eager)
    per_video = mode == "shared_prefix" and max_row == 128  # else split by mode or by the row budget
    assert len(lazy) == len(eager) and (len(lazy) == 7 if per_video else len(lazy) > 7)
    assert [(r.video_id, r.num_tokens, r.num_completions) for r in lazy] == \
           [(r.video_id, r.num_tokens, r.num_completions) for r in eager]
    for a, b in zip(lazy, eager):
        assert (a.prompt_ids, a.completions, [a.context(j) for j in range(a.num_completions)]) == \
               (b.prompt_ids, b.completions, [b.context(j) for j in range(b.num_completions)])
    x, y = collate(lazy[:3], 0, mode), collate(eager[:3], 0, mode)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)


def test_a_video_without_a_comment_is_named_and_leaves_no_cache(tmp_path: Path, tokenizer) -> None:
    bad = videos(4)
    bad[2].comments = [Comment("  ")]
    write_splits(tmp_path / "data", bad, videos(1, "val"))
    data = DatasetDir(tmp_path / "data")
    with pytest.raises(VrpError, match=r"train.jsonl: video 'v2' has no comment"):
        tc.cached_split(data, "train", 0, tokenizer, PCFG, None, progress=False)
    assert cache_dirs(data) == []


def test_tiered_encodings_with_dropout_are_cached_exactly(data: DatasetDir, tokenizer) -> None:
    tiers = tc.TierSettings("likes", 0.5, 3)
    got = cached(data, tokenizer, tiers=tiers)
    assert got == plain(data, tokenizer, tiers=tiers)
    train_ctx = [c for v in got[0] for c in v.contexts]
    assert [] in train_ctx and any(train_ctx)  # some markers dropped, some kept
    assert all(c for v in got[1] for c in v.contexts[:1])  # validation: the most liked comment keeps its marker


@pytest.mark.parametrize("change", ["max_prompt_tokens", "truncation", "system_prompt", "tiers", "tier_seed",
                                    "chat_template", "tokenizer_path", "dataset", "max_train_videos"])
def test_another_setting_tokenizer_or_dataset_is_never_reused(data: DatasetDir, tokenizer, calls,
                                                              change: str) -> None:
    base_tiers = tc.TierSettings("likes", 0.2, 0)
    cached(data, tokenizer, tiers=base_tiers)
    tok, pcfg, tiers, limit = tokenizer, PCFG, base_tiers, 0
    if change in ("max_prompt_tokens", "truncation", "system_prompt"):
        pcfg = PromptConfig(**{**PCFG.__dict__, change: {"max_prompt_tokens": 58, "truncation": "head_tail",
                                                         "system_prompt": "Write a comment."}[change]})
    elif change in ("tiers", "tier_seed"):
        tiers = None if change == "tiers" else tc.TierSettings("likes", 0.2, 1)
    elif change in ("chat_template", "tokenizer_path"):
        tok = copy.deepcopy(tokenizer)
        if change == "chat_template":
            tok.chat_template = "Chat:\n" + tokenizer.chat_template
        else:
            tok.name_or_path = "/elsewhere/tokenizer"
    elif change == "dataset":
        train_v, val_v = data.train_videos(), data.validation_videos()
        train_v[0].comments[0].text = "an edited comment"
        write_splits(data.path, train_v, val_v)
    else:
        limit = 4
    calls.clear()
    got = cached(data, tok, pcfg, tiers, train_limit=limit)
    if change == "max_train_videos":  # only the training split is cut: its validation cache is reused
        assert calls == ids(data, 4)[:4] and len(cache_dirs(data)) == 3
    else:
        assert calls == ids(data)  # tokenized again: the old caches were not reused
        assert len(cache_dirs(data)) == 4
    assert got == plain(data, tok, pcfg, tiers, train_limit=limit)


def damage(cache: Path, how: str) -> None:
    arrow = cache / "train-00000.arrow"
    if how == "truncated":
        arrow.write_bytes(arrow.read_bytes()[:-100])
    elif how == "altered":  # same size, one token id changed
        raw = bytearray(arrow.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        arrow.write_bytes(bytes(raw))
    elif how == "no_marker":
        (cache / tc.MARKER).unlink()
    elif how == "garbage_marker":
        (cache / tc.MARKER).write_text("{not json")
    elif how == "foreign_file":  # the marker made to read a file it does not checksum
        marker = json.loads((cache / tc.MARKER).read_text())
        marker["order"] = ["../elsewhere.arrow"]
        (cache / tc.MARKER).write_text(json.dumps(marker))
    else:
        arrow.unlink()


@pytest.mark.parametrize("how, said", [("truncated", "bytes"), ("altered", "sha256"), ("no_marker", "no complete.json"),
                                       ("garbage_marker", "invalid JSON"), ("missing", "is missing"),
                                       ("foreign_file", "does not checksum")])
def test_a_damaged_cache_is_rebuilt_with_a_notice(data: DatasetDir, tokenizer, calls, capsys, how: str,
                                                  said: str) -> None:
    first = cached(data, tokenizer)
    cache = train_cache(data)
    damage(cache, how)
    calls.clear()
    again = cached(data, tokenizer)
    err = capsys.readouterr().err
    assert f"notice: token cache {cache} is damaged" in err and said in err and "rebuilding it" in err
    assert calls == ids(data)[:7] and again == first  # the training split again, the validation cache reused
    calls.clear()
    assert cached(data, tokenizer) == first
    assert calls == []  # the rebuilt cache is sound


def test_a_build_stopped_by_a_full_disk_leaves_no_cache(data: DatasetDir, tokenizer, monkeypatch) -> None:
    def full(path, marker):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tc, "_write_marker", full)  # the last write of a build: all Arrow files are written
    with pytest.raises(VrpError, match=r"cannot build the token cache .*No space left on device.*`token_cache` false"):
        cached(data, tokenizer)
    assert [p.name for p in (data.path / tc.CACHE_DIR).iterdir() if not p.name.endswith(".lock")] == []


def test_an_encoding_error_names_the_video_and_leaves_no_cache(data: DatasetDir, tokenizer) -> None:
    train_v, val_v = data.train_videos(), data.validation_videos()
    train_v[2].title = "a very long title " * 20  # the title alone exceeds the 64-token prompt budget
    write_splits(data.path, train_v, val_v)
    with pytest.raises(ConfigError, match=r"max_prompt_tokens: video 'v2': the title and chat template take"):
        cached(data, tokenizer)
    assert cache_dirs(data) == [] and not any(p.name.startswith(".tokens-")
                                              for p in (data.path / tc.CACHE_DIR).iterdir())


def test_many_arrow_files_keep_the_video_order(data: DatasetDir, tokenizer, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "MAX_SHARD_SIZE", "2KB")  # checked after each batch of WRITE_BATCH rows
    monkeypatch.setattr(tc, "WRITE_BATCH", 2)
    got = cached(data, tokenizer)
    assert len(list(train_cache(data).glob("train-*.arrow"))) > 1
    assert got == plain(data, tokenizer)


def test_an_unwritable_dataset_dir_tokenizes_in_memory(data: DatasetDir, tokenizer, capsys) -> None:
    (data.path / tc.CACHE_DIR).write_text("a file where the cache dir would be")
    got = cached(data, tokenizer, progress=True)
    assert "notice: cannot write the token cache" in capsys.readouterr().err
    assert got == plain(data, tokenizer)


def test_a_second_process_waits_for_the_one_building(data: DatasetDir, tokenizer, calls, capsys) -> None:
    from filelock import FileLock

    key, _ = tc.cache_key(data.fingerprint(), tokenizer, PCFG, None, "train", 0)
    (data.path / tc.CACHE_DIR).mkdir()
    held = FileLock(str(data.path / tc.CACHE_DIR / f"tokens-{key[:32]}.lock"))
    held.acquire()  # another process building
    out: list = []
    worker = threading.Thread(target=lambda: out.append(list(tc.cached_split(data, "train", 0, tokenizer, PCFG,
                                                                             None))))
    worker.start()
    deadline = time.monotonic() + 20
    while "waiting for another process" not in capsys.readouterr().err:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert worker.is_alive() and calls == []  # it waits, tokenizing nothing
    held.release()
    worker.join(60)
    assert out and out[0] == plain(data, tokenizer)[0]


# --- training through the cache -----------------------------------------------------------------------------------
def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("tiers", [False, True])
def test_training_with_and_without_the_cache_gives_the_same_adapter(tmp_path: Path, tiny_model_dir: Path,
                                                                    tiers: bool) -> None:
    write_splits(tmp_path / "data", videos(6), videos(2, "val"))
    kw = {"batch_size": 2, "max_steps": 2, "eval_every": 2, "save_every": 2, "curve_videos": 0, "tiers": tiers}
    train(tiny_train_config(tiny_model_dir, token_cache=False, **kw), tmp_path / "data", tmp_path / "plain",
          progress=False)
    assert not (tmp_path / "data" / tc.CACHE_DIR).exists()
    train(tiny_train_config(tiny_model_dir, **kw), tmp_path / "data", tmp_path / "cached", progress=False)
    assert len(cache_dirs(DatasetDir(tmp_path / "data"))) == 2  # one per split
    a, b = _adapter(tmp_path / "plain"), _adapter(tmp_path / "cached")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(torch.count_nonzero(a[k]) for k in a if "lora_B" in k)  # trained: B starts at zero


@pytest.mark.slow
@pytest.mark.slow
def test_a_resumed_run_reuses_the_cache_and_continues_the_same_data_order(tmp_path: Path, tiny_model_dir: Path,
                                                                          calls) -> None:
    write_splits(tmp_path / "data", videos(6), videos(2, "val"))
    c = tiny_train_config(tiny_model_dir, batch_size=1, grad_accum=2, max_steps=6, eval_every=3, save_every=2,
                          curve_videos=0)
    train(tiny_train_config(tiny_model_dir, **{**c.__dict__, "token_cache": False}), tmp_path / "data",
          tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_3(step: int) -> None:
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(c, tmp_path / "data", tmp_path / "resumed", on_step=kill_at_3, progress=False)
    calls.clear()
    train(c, tmp_path / "data", tmp_path / "resumed", resume=True, progress=False)
    assert calls == []  # the resumed run read the cache
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
