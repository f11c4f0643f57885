"""The token cache (`vrp.token_cache`): built once and reused, rebuilt for another tokenizer, prompt setting or
dataset, rebuilt with a notice when damaged, never left looking complete after a failed build, and training through
it gives the same adapter as training without it (fresh and resumed)."""
from __future__ import annotations

import copy
import errno
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


def splits(data: DatasetDir) -> tuple[list[Video], list[Video]]:
    return data.train_videos(), data.validation_videos()


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


def test_built_once_then_reused_with_the_uncached_encodings(data: DatasetDir, tokenizer, calls, capsys) -> None:
    train_v, val_v = splits(data)
    expected = tc.encode_splits(tokenizer, train_v, val_v, PCFG, None)
    calls.clear()
    first = tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v)
    assert calls == [v.video_id for v in train_v + val_v]  # each video tokenized once
    err = capsys.readouterr().err
    assert "token cache: train" in err and "token cache: built" in err  # the progress bar, then what was done
    [cache] = cache_dirs(data)
    stamp = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    calls.clear()
    second = tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v)
    assert calls == [] and "token cache: reused" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamp
    assert first == second == expected
    assert 56 <= max(len(v.prompt_ids) for v in first[0]) <= 64  # the transcripts were cut to the budget


def test_tiered_encodings_with_dropout_are_cached_exactly(data: DatasetDir, tokenizer) -> None:
    train_v, val_v = splits(data)
    tiers = tc.TierSettings("likes", 0.5, 3)
    cached = tc.cached_encodings(data, tokenizer, PCFG, tiers, train_v, val_v, progress=False)
    assert cached == tc.encode_splits(tokenizer, train_v, val_v, PCFG, tiers)
    train_ctx = [c for v in cached[0] for c in v.contexts]
    assert [] in train_ctx and any(train_ctx)  # some markers dropped, some kept
    assert all(c for v in cached[1] for c in v.contexts[:1])  # validation: the most liked comment keeps its marker


@pytest.mark.parametrize("change", ["max_prompt_tokens", "truncation", "system_prompt", "tiers", "tier_seed",
                                    "chat_template", "tokenizer_path", "dataset", "max_train_videos"])
def test_another_setting_tokenizer_or_dataset_is_never_reused(data: DatasetDir, tokenizer, calls,
                                                              change: str) -> None:
    train_v, val_v = splits(data)
    base_tiers = tc.TierSettings("likes", 0.2, 0)
    tc.cached_encodings(data, tokenizer, PCFG, base_tiers, train_v, val_v, progress=False)
    tok, pcfg, tiers = tokenizer, PCFG, base_tiers
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
        train_v[0].comments[0].text = "an edited comment"
        write_splits(data.path, train_v, val_v)
    else:
        train_v = train_v[:4]
    calls.clear()
    got = tc.cached_encodings(data, tok, pcfg, tiers, train_v, val_v, progress=False)
    assert calls == [v.video_id for v in train_v + val_v]  # tokenized again: the old cache was not reused
    assert len(cache_dirs(data)) == 2
    assert got == tc.encode_splits(tok, train_v, val_v, pcfg, tiers)


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
    else:
        arrow.unlink()


@pytest.mark.parametrize("how, said", [("truncated", "bytes"), ("altered", "sha256"), ("no_marker", "no complete.json"),
                                       ("garbage_marker", "invalid JSON"), ("missing", "is missing")])
def test_a_damaged_cache_is_rebuilt_with_a_notice(data: DatasetDir, tokenizer, calls, capsys, how: str,
                                                  said: str) -> None:
    train_v, val_v = splits(data)
    first = tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v, progress=False)
    [cache] = cache_dirs(data)
    damage(cache, how)
    calls.clear()
    again = tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v, progress=False)
    err = capsys.readouterr().err
    assert f"notice: token cache {cache} is damaged" in err and said in err and "rebuilding it" in err
    assert len(calls) == len(train_v) + len(val_v) and again == first
    calls.clear()
    assert tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v, progress=False) == first
    assert calls == []  # the rebuilt cache is sound


def test_a_build_stopped_by_a_full_disk_leaves_no_cache(data: DatasetDir, tokenizer, monkeypatch) -> None:
    def full(path, marker):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tc, "_write_marker", full)  # the last write of a build: all Arrow files are written
    train_v, val_v = splits(data)
    with pytest.raises(VrpError, match=r"cannot build the token cache .*No space left on device.*`token_cache` false"):
        tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v, progress=False)
    assert [p.name for p in (data.path / tc.CACHE_DIR).iterdir() if not p.name.endswith(".lock")] == []


def test_an_encoding_error_names_the_video_and_leaves_no_cache(data: DatasetDir, tokenizer) -> None:
    train_v, val_v = splits(data)
    train_v[2].title = "a very long title " * 20  # the title alone exceeds the 64-token prompt budget
    with pytest.raises(ConfigError, match=r"max_prompt_tokens: video 'v2': the title and chat template take"):
        tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v, progress=False)
    assert cache_dirs(data) == [] and not any(p.name.startswith(".tokens-")
                                              for p in (data.path / tc.CACHE_DIR).iterdir())


def test_many_arrow_files_keep_the_video_order(data: DatasetDir, tokenizer, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "MAX_SHARD_SIZE", "2KB")  # checked after each batch of WRITE_BATCH rows
    monkeypatch.setattr(tc, "WRITE_BATCH", 2)
    train_v, val_v = splits(data)
    got = tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v, progress=False)
    [cache] = cache_dirs(data)
    assert len(list(cache.glob("train-*.arrow"))) > 1
    assert got == tc.encode_splits(tokenizer, train_v, val_v, PCFG, None)


def test_an_unwritable_dataset_dir_tokenizes_in_memory(data: DatasetDir, tokenizer, capsys) -> None:
    (data.path / tc.CACHE_DIR).write_text("a file where the cache dir would be")
    train_v, val_v = splits(data)
    got = tc.cached_encodings(data, tokenizer, PCFG, None, train_v, val_v)
    assert "notice: cannot write the token cache" in capsys.readouterr().err
    assert got == tc.encode_splits(tokenizer, train_v, val_v, PCFG, None)


def test_a_second_process_waits_for_the_one_building(data: DatasetDir, tokenizer, calls, capsys) -> None:
    from filelock import FileLock

    train_v, val_v = splits(data)
    key, _ = tc.cache_key(data.fingerprint(), tokenizer, PCFG, None, train_v, val_v)
    (data.path / tc.CACHE_DIR).mkdir()
    held = FileLock(str(data.path / tc.CACHE_DIR / f"tokens-{key[:32]}.lock"))
    held.acquire()  # another process building
    out: list = []
    worker = threading.Thread(target=lambda: out.append(tc.cached_encodings(data, tokenizer, PCFG, None, train_v,
                                                                            val_v)))
    worker.start()
    deadline = time.monotonic() + 20
    while "waiting for another process" not in capsys.readouterr().err:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert worker.is_alive() and calls == []  # it waits, tokenizing nothing
    held.release()
    worker.join(60)
    assert out and out[0] == tc.encode_splits(tokenizer, train_v, val_v, PCFG, None)


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
    assert len(cache_dirs(DatasetDir(tmp_path / "data"))) == 1
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
