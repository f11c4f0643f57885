"""Bad inputs a careless or malicious user gives `vrp prepare/train/generate/transcript`: each must end in one line
`error: ...` (exit status 2, no traceback) naming the file, row, field or flag, and must leave no half-written or
clobbered output behind. One test per bug found; each failed before its fix."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest
from helpers import one_line_error, tiny_llama

from vrp.cli import main
from vrp.errors import ConfigError, VrpError

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

SMALL = ["--precision", "fp32", "--max-prompt-tokens", "64", "--max-row-tokens", "256"]


def table(path: Path, **cols) -> Path:
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


def small_dataset(tmp_path: Path) -> Path:
    d = tmp_path / "ds"
    src = table(tmp_path / "t.csv", title=["a", "a", "b", "b"], transcript=["one two", "one two", "three", "three"],
                comment=["c1", "c2", "c3", "c4"])
    assert main(["prepare", str(src), "--out", str(d), "--val-fraction", "0.5"]) == 0
    return d


# ----------------------------------------------------------------------------------------------------- prepare


def test_prepare_like_count_infinity_names_the_row(tmp_path, capsys) -> None:
    src = table(tmp_path / "inf.csv", title=["a", "a"], transcript=["x", "x"], comment=["c", "d"],
                like_count=["3", "inf"])
    one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "o")], "inf.csv: row 3", "like_count")
    assert not (tmp_path / "o").exists()


def test_prepare_same_video_id_with_different_transcripts_is_an_error(tmp_path, capsys) -> None:
    src = table(tmp_path / "dup.csv", video_id=["v1", "v1"], title=["a", "a"], transcript=["x", "other"],
                comment=["c", "d"])
    one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "o")],
                   "dup.csv: row 3", "'v1'", "different transcript than row 2")


def test_prepare_skips_comments_of_only_invisible_characters(tmp_path, capsys) -> None:
    src = table(tmp_path / "zw.csv", title=["a", "a", "b"], transcript=["x", "x", "y"],
                comment=["\u200b\u200b", "real one", "\ufeff \u200b"])
    with pytest.warns(UserWarning, match="skipped 1 video"):
        m = main(["prepare", str(src), "--out", str(tmp_path / "o"), "--val-fraction", "0"])
    assert m == 0
    videos = [json.loads(line) for line in (tmp_path / "o/train.jsonl").read_text().splitlines()]
    assert [[c["text"] for c in v["comments"]] for v in videos] == [["real one"]]
    manifest = json.loads((tmp_path / "o/manifest.json").read_text())
    assert manifest["stats"]["comments_skipped_empty"] == 2


def test_prepare_out_that_is_a_file(tmp_path, capsys) -> None:
    src = table(tmp_path / "t.csv", title=["a"], transcript=["x"], comment=["c"])
    (tmp_path / "f.txt").write_text("keep me")
    for flags in ([], ["--overwrite"]):
        one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "f.txt"), *flags], "f.txt")
    one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "f.txt" / "sub")], "is a file")
    assert (tmp_path / "f.txt").read_text() == "keep me"


def test_prepare_from_a_prepared_dataset_dir(tmp_path, capsys) -> None:
    ds = small_dataset(tmp_path)
    assert main(["prepare", str(ds), "--out", str(tmp_path / "again"), "--val-fraction", "0.5"]) == 0
    m = json.loads((tmp_path / "again/manifest.json").read_text())
    assert m["format"] == "prepared dataset dir" and m["videos"]["total"] == 2 and len(m["source_sha256"]) == 64


def test_prepare_non_utf8_jsonl_is_a_one_line_error(tmp_path, capsys) -> None:
    (tmp_path / "lat.jsonl").write_bytes(b'{"video_id": "caf\xe9", "transcript": "x", "comments": []}\n')
    one_line_error(capsys, ["prepare", str(tmp_path / "lat.jsonl"), "--out", str(tmp_path / "o")],
                   "lat.jsonl", "not UTF-8")
    # a table JSONL in a legacy encoding is read (tests/test_inputs_tables.py); binary bytes fit no encoding
    (tmp_path / "t.jsonl").write_bytes(b'{"title": "caf\x00\xff\x81", "transcript": "x", "comment": "c"}\n')
    one_line_error(capsys, ["prepare", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o")], "t.jsonl", "UTF-8")
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text('{"video_id": "a", "transcript": "x", "comments": [{"text": "c"}]}\n')
    (ds / "validation.jsonl").write_bytes(b"\xff\n")
    one_line_error(capsys, ["prepare", str(ds), "--out", str(tmp_path / "o")], "validation.jsonl:1", "UTF-8")


@pytest.mark.parametrize("record, field", [
    ({"video_id": None, "transcript": "x", "comments": [{"text": "c"}]}, "video_id"),
    ({"video_id": "a", "transcript": None, "comments": [{"text": "c"}]}, "transcript"),
    ({"video_id": "a", "transcript": ["x"], "comments": [{"text": "c"}]}, "transcript"),
    ({"video_id": "a", "transcript": "x", "comments": "abc"}, "comments"),
    ({"video_id": "a", "transcript": "x", "comments": [{"text": None}]}, "comments[0].text"),
    ({"video_id": "a", "transcript": "x", "comments": [{"text": "c", "like_count": "many"}]},
     "comments[0].like_count"),
])
def test_video_jsonl_with_wrong_field_types_names_the_field(tmp_path, capsys, record, field) -> None:
    (tmp_path / "v.jsonl").write_text(json.dumps(record) + "\n")
    one_line_error(capsys, ["prepare", str(tmp_path / "v.jsonl"), "--out", str(tmp_path / "o")],
                   "v.jsonl:1", f"'{field}'")
    assert not (tmp_path / "o").exists()


def test_prepared_files_are_not_private_temp_files(tmp_path) -> None:
    small_dataset(tmp_path)
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("train.jsonl", "validation.jsonl", "manifest.json"):
        mode = stat.S_IMODE((tmp_path / "ds" / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o777 & ~mask


def test_prepare_keeps_numeric_looking_text_columns_as_text(tmp_path) -> None:
    (tmp_path / "n.csv").write_text("video_id,title,transcript,comment\n123,t,x,5\n,t2,y,6\n")
    assert main(["prepare", str(tmp_path / "n.csv"), "--out", str(tmp_path / "o"), "--val-fraction", "0"]) == 0
    videos = [json.loads(line) for line in (tmp_path / "o/train.jsonl").read_text().splitlines()]
    assert videos[0]["video_id"] == "123" and videos[0]["comments"][0]["text"] == "5"


def test_prepare_failing_midway_leaves_no_partial_dataset(tmp_path, monkeypatch) -> None:
    import vrp.artifacts
    import vrp.prepare.run

    src = table(tmp_path / "t.csv", title=["a", "b"], transcript=["x", "y"], comment=["c", "d"])

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(vrp.artifacts, "write_json_atomic", boom)  # the manifest is written last
    with pytest.raises(KeyboardInterrupt):
        vrp.prepare.run.prepare(src, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_collect_dir_like_count_infinity(tmp_path, capsys) -> None:
    d = tmp_path / "collect"
    d.mkdir()
    (d / "videos.jsonl").write_text(json.dumps({"id": "a", "transcript": "hello", "comments": [
        {"text": "ok", "like_count": float("inf")}, {"text": "nan", "like_count": float("nan")}]}) + "\n")
    assert main(["prepare", str(d), "--out", str(tmp_path / "o"), "--val-fraction", "0"]) == 0
    v = json.loads((tmp_path / "o/train.jsonl").read_text())
    assert [c.get("like_count", "unknown") for c in v["comments"]] == ["unknown", "unknown"]  # never 0 ("low")


def test_collect_dir_non_utf8_line(tmp_path, capsys) -> None:
    d = tmp_path / "collect"
    d.mkdir()
    (d / "videos.jsonl").write_bytes(b'{"id": "a", "transcript": "caf\xe9", "comments": []}\n')
    one_line_error(capsys, ["prepare", str(d), "--out", str(tmp_path / "o")], "videos.jsonl:1", "UTF-8")


# -------------------------------------------------------------------------------------------------- transcript


@pytest.mark.parametrize("data, name", [(b"\xff\xfeA", "a.txt"), (b"\xff\xfe\x00\xd8", "b.vtt")])
def test_transcript_bad_utf16(tmp_path, capsys, data, name) -> None:
    (tmp_path / name).write_bytes(data)
    one_line_error(capsys, ["transcript", str(tmp_path / name)], name, "UTF-16")


@pytest.mark.parametrize("content, name", [
    ('[{"text": "a", "start": "NaN", "duration": 1}]', "api.json"),
    ('[{"text": "a", "start": 1e400, "duration": 1}]', "inf.json"),
    ('[{"text": "a", "start": 0, "end": 1e999}]', "seg.json"),
    ('{"events": [{"segs": [{"utf8": "hi"}], "tStartMs": 1e400}]}', "yt.json3"),
])
def test_transcript_non_finite_times_are_errors_not_invalid_json(tmp_path, capsys, content, name) -> None:
    (tmp_path / name).write_text(content)
    one_line_error(capsys, ["transcript", str(tmp_path / name), "--format", "json"], name)


@pytest.mark.parametrize("content, name", [(b"", "e.txt"), (b"\xef\xbb\xbf  \n", "bom.txt"), (b"[]", "e.json")])
def test_transcript_of_an_empty_file_is_an_error(tmp_path, capsys, content, name) -> None:
    (tmp_path / name).write_bytes(content)
    one_line_error(capsys, ["transcript", str(tmp_path / name)], name, "no transcript text")
    (tmp_path / "d.vtt").mkdir()
    one_line_error(capsys, ["transcript", str(tmp_path / "d.vtt")], "d.vtt", "directory")


# ------------------------------------------------------------------------------------------------ train config


@pytest.mark.parametrize("yaml_text, needle", [
    ('lora_r: "abc"\n', "option 'lora_r' must be an integer, got 'abc'"),
    ("learning_rate: fast\n", "option 'learning_rate' must be a number, got 'fast'"),
    ("learning_rate: .nan\n", "option 'learning_rate' must be a finite number"),
    ("group_by_length: 1\n", "option 'group_by_length' must be true or false"),
    ("lora_r: [1, 2\n", "c.yaml:2: invalid YAML"),
])
def test_yaml_config_wrong_types_name_file_and_option(tmp_path, capsys, yaml_text, needle) -> None:
    (tmp_path / "c.yaml").write_text(yaml_text)
    one_line_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config",
                            str(tmp_path / "c.yaml")], needle)
    assert not (tmp_path / "r").exists()


def test_yaml_exponent_learning_rate_is_a_number(tmp_path) -> None:
    from vrp.options import build_config
    from vrp.train.config import TrainConfig

    (tmp_path / "c.yaml").write_text("learning_rate: 2e-4\nlora_r: 8.0\n")  # YAML 1.1 reads 2e-4 as a string
    cfg = build_config(TrainConfig, tmp_path / "c.yaml")
    assert cfg.learning_rate == 2e-4 and cfg.lora_r == 8 and isinstance(cfg.lora_r, int)


@pytest.mark.parametrize("flags, needle", [
    (["--max-steps", "0"], "error: --max-steps: must be >= 1, or -1 to run --epochs epochs; got 0"),
    (["--max-steps", "-5"], "error: --max-steps: must be >= 1"),
    (["--learning-rate", "-1"], "error: --learning-rate: must be > 0, got -1.0"),
    (["--learning-rate", "nan"], "error: --learning-rate: must be a finite number, got 'nan'"),
    (["--lora-r", "abc"], "error: --lora-r: must be an integer, got 'abc'"),
    (["--max-grad-norm", "-1"], "error: --max-grad-norm: must be > 0"),
    (["--lora-dropout", "1.5"], "error: --lora-dropout: must be in [0, 1)"),
    (["--warmup-steps", "-3"], "error: --warmup-steps: must be >= 0, got -3"),
    (["--lr-scheduler", "bogus"], "error: --lr-scheduler: choose from"),
    (["--optimizer", "sgd"], "error: --optimizer: choose"),
    (["--target-modules", "[]"], "error: --target-modules: give all-linear"),
])
def test_train_flag_ranges_are_checked_up_front(tmp_path, capsys, flags, needle) -> None:
    one_line_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *flags], needle)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------------- train


def test_train_failed_start_leaves_no_run_dir(tmp_path, capsys, tiny_model_dir) -> None:
    ds = small_dataset(tmp_path)
    model = ["--model", str(tiny_model_dir), *SMALL, "--max-steps", "1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    one_line_error(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "r1"), *model], "empty dataset")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r2"), *model,
                            "--target-modules", '["nope"]'], "error: --target-modules: no module named ['nope']")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r3"), *model,
                            "--attn-implementation", "bogus"], "attn_implementation")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text((ds / "train.jsonl").read_text()[:30])
    one_line_error(capsys, ["train", "--data", str(bad), "--out", str(tmp_path / "r4"), *model],
                   "train.jsonl:1: invalid JSON")
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


def test_train_prompt_longer_than_the_model_context_names_the_flags(tmp_path, capsys, tokenizer) -> None:
    short = tmp_path / "short"
    tiny_llama(tokenizer, max_position_embeddings=128).save_pretrained(short)
    tokenizer.save_pretrained(short)
    ds = small_dataset(tmp_path)
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--model", str(short),
                            "--precision", "fp32", "--max-prompt-tokens", "200", "--max-row-tokens", "512"],
                   "error: --max-prompt-tokens: --max-prompt-tokens + --max-comment-tokens + 1 = 329 tokens",
                   "(128 tokens)")
    assert not (tmp_path / "r").exists()
    one_line_error(capsys, ["generate", "--model", str(short), "--transcript", "hi", "--precision", "fp32",
                            "--max-prompt-tokens", "100", "--max-new-tokens", "50", "--out",
                            str(tmp_path / "p.csv")], "--max-prompt-tokens + --max-new-tokens = 150")
    assert not (tmp_path / "p.csv").exists()


def test_model_errors_are_one_line(tmp_path, capsys) -> None:
    ds = small_dataset(tmp_path)
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--model",
                            "someorg/not-cached-model", *SMALL], "error: --model: someorg/not-cached-model")
    (tmp_path / "notes.txt").write_text("not a model")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--model",
                            str(tmp_path / "notes.txt"), *SMALL], "error: --model: ", "notes.txt is a file")
    assert not (tmp_path / "r").exists()


def test_resume_refuses_changed_options_and_config(tmp_path, capsys, tiny_model_dir) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\nmax_prompt_tokens: 64\nmax_row_tokens: 256\n")
    ds = tmp_path / "ds"
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(run), "--resume", "--lora-r", "8"],
                   "--resume cannot change", "--lora-r 8 (run: 16)")
    (tmp_path / "c.yaml").write_text("lora_r: 4\n")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(run), "--resume", "--config",
                            str(tmp_path / "c.yaml")], "error: --config: --resume continues with")


def test_resume_after_a_kill_keeps_metrics_and_refuses_other_data(tmp_path, tiny_model_dir) -> None:
    from vrp.options import build_config
    from vrp.train.config import TrainConfig
    from vrp.train.loop import train

    ds = small_dataset(tmp_path)
    cfg = build_config(TrainConfig, None, dict(model=str(tiny_model_dir), precision="fp32", max_prompt_tokens=64,
                                               max_row_tokens=256, lora_r=2, max_steps=4, save_every=2,
                                               eval_every=100))

    def kill_after_3(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, ds, tmp_path / "run", on_step=kill_after_3, progress=False)
    assert not (tmp_path / "run" / "adapter").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "validation.jsonl").write_text((ds / "validation.jsonl").read_text())
    (other / "train.jsonl").write_text((ds / "train.jsonl").read_text() + json.dumps(
        {"video_id": "new", "title": "", "transcript": "x", "comments": [{"text": "c", "rank": 1}]}) + "\n")
    with pytest.raises(ConfigError, match="data: .*other is not the data this run was trained on"):
        train(cfg, other, tmp_path / "run", resume=True, progress=False)
    train(cfg, ds, tmp_path / "run", resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]  # the base model's validation row, then one row per step (none twice)


def test_kill_while_saving_the_final_adapter_leaves_no_half_adapter(tmp_path, tiny_model_dir, monkeypatch) -> None:
    from transformers import PreTrainedTokenizerBase

    from vrp.options import build_config
    from vrp.train.config import TrainConfig
    from vrp.train.loop import train

    ds = small_dataset(tmp_path)
    cfg = build_config(TrainConfig, None, dict(model=str(tiny_model_dir), precision="fp32", max_prompt_tokens=64,
                                               max_row_tokens=256, lora_r=2, max_steps=1, eval_every=100))

    def killed(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, ds, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "adapter").exists()


# ---------------------------------------------------------------------------------------------------- generate


def test_generate_bad_counts_fail_before_anything_runs(tmp_path, capsys) -> None:
    ds = small_dataset(tmp_path)
    out = str(tmp_path / "p.csv")
    gen = ["generate", "--model", "no-such-model-needed", "--precision", "fp32", "--out", out]
    one_line_error(capsys, [*gen, "--input", str(ds), "--max-videos", "-1"], "error: --max-videos: must be >= 0")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--num-comments", "0"], "error: --num-comments: must be >= 1")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--max-new-tokens", "0"],
                   "error: --max-new-tokens: must be >= 1")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--preset", ","], "error: --preset: no preset named in ','")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--preset", "fast"], "error: --preset: unknown preset 'fast'")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--checkpoint", "latest"],
                   "error: --checkpoint: needs a --run")
    (tmp_path / "d.csv").mkdir()
    one_line_error(capsys, [*gen[:-1], str(tmp_path / "d.csv"), "--transcript", "hi", "--overwrite"],
                   "d.csv is a directory")
    assert not (tmp_path / "p.csv").exists()


def test_generate_never_writes_over_its_input(tmp_path, capsys) -> None:
    """`--out` equal to the input table, or inside the input dataset dir, is refused even with --overwrite."""
    src = table(tmp_path / "mine.csv", title=["a"], transcript=["x"], comment=["c"])
    before = src.read_bytes()
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(src), "--out", str(src), "--overwrite"],
                   "mine.csv is or lies in an input of the command, --input")
    ds = small_dataset(tmp_path)
    val = ds / "validation.jsonl"
    kept = val.read_bytes()
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(ds), "--out", str(val), "--overwrite"],
                   "lies in an input of the command, --input")
    assert src.read_bytes() == before and val.read_bytes() == kept


def test_generate_dataset_dir_without_validation_videos(tmp_path, capsys) -> None:
    src = table(tmp_path / "t.csv", title=["a"], transcript=["x"], comment=["c"])
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--val-fraction", "0"]) == 0
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(tmp_path / "ds"), "--out",
                            str(tmp_path / "p.csv")], "validation.jsonl: no videos")
    assert not (tmp_path / "p.csv").exists()


def test_generate_non_utf8_txt_transcript_is_an_error(tmp_path, capsys) -> None:
    # Windows-1252 text is read (tests/test_inputs_captions.py); bytes that fit no encoding are an error
    (tmp_path / "talk.txt").write_bytes(b"caf\xe9 au lait \x00\x81\xff")
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(tmp_path / "talk.txt"), "--out",
                            str(tmp_path / "p.csv")], "talk.txt", "UTF-8")


@pytest.mark.parametrize("config_text, needle", [
    ("- a list\n", "expected a mapping"),
    ("model: [unclosed\n", "invalid YAML"),
    ("model: m\nmax_prompt_tokens: abc\n", "option 'max_prompt_tokens' must be an integer"),
])
def test_generate_run_with_broken_config_yaml(tmp_path, capsys, config_text, needle) -> None:
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(config_text)
    one_line_error(capsys, ["generate", "--run", str(run), "--transcript", "hi", "--out", str(tmp_path / "p.csv")],
                   "config.yaml", needle)


def test_write_predictions_xlsx_with_control_characters(tmp_path) -> None:
    from vrp.generate.run import write_predictions

    write_predictions([{"video_id": "a", "title": "t\x01", "comment": "bell\x07 \x1b[31mred"}], tmp_path / "p.xlsx")
    df = pd.read_excel(tmp_path / "p.xlsx")
    assert df["comment"].tolist() == ["bell [31mred"] and df["title"].tolist() == ["t"]


def test_atomic_write_errors_are_vrp_errors(tmp_path) -> None:
    from vrp.files import write_text_atomic

    (tmp_path / "d").mkdir()
    with pytest.raises(VrpError, match="is a directory"):
        write_text_atomic(tmp_path / "d", "x")
    (tmp_path / "f").write_text("x")
    with pytest.raises(VrpError, match="cannot write"):
        write_text_atomic(tmp_path / "f" / "child.txt", "x")


def test_target_modules_flag_takes_the_documented_json_list() -> None:
    from vrp.cli import build_parser
    from vrp.options import build_config
    from vrp.train.config import TrainConfig

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--target-modules", '["q_proj","v_proj"]'])
    cfg = build_config(TrainConfig, None, vars(args))
    assert cfg.target_modules == ["q_proj", "v_proj"]  # was the string '["q_proj","v_proj"]' (a regex to PEFT)


def test_unwritable_out_fails_before_any_work(tmp_path, capsys) -> None:
    ds = small_dataset(tmp_path)
    (tmp_path / "file").write_text("x")
    blocked = tmp_path / "file"
    one_line_error(capsys, ["generate", "--model", "no-such-model", "--transcript", "hi", "--out",
                            str(blocked / "p.csv")], "error: --out: cannot write", "is a file")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(blocked / "run"), "--model", "no-such-model"],
                   "error: --out: cannot write", "is a file")


def test_overlong_title_names_the_video(tmp_path, capsys, tokenizer, tiny_model_dir) -> None:
    from vrp.prompts import PromptConfig, encode_video
    from vrp.records import Comment, Video

    long = Video("v-long", "long " * 300, "words", [Comment("c")])
    with pytest.raises(VrpError, match="video 'v-long': the title and chat template take"):
        encode_video(tokenizer, long, PromptConfig(max_prompt_tokens=64))
    src = tmp_path / "v.jsonl"
    src.write_text(json.dumps({"video_id": "ok", "title": "t", "transcript": "x"}) + "\n"
                   + json.dumps(long.to_json()) + "\n")
    one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), "--input", str(src), "--precision", "fp32",
                            "--max-prompt-tokens", "64", "--max-new-tokens", "2", "--preset", "greedy", "--out",
                            str(tmp_path / "p.csv")], "video 'v-long'")


def test_video_jsonl_without_comments_is_read_as_videos(tmp_path) -> None:
    from vrp.generate.run import load_inputs

    src = tmp_path / "v.jsonl"
    src.write_text(json.dumps({"video_id": "a", "title": "t", "transcript": "x"}) + "\n")
    videos = load_inputs(str(src))  # was read as a table and failed with "missing column(s) ['comment']"
    assert [(v.video_id, v.title, v.transcript, v.comments) for v in videos] == [("a", "t", "x", [])]


def test_broken_model_dirs_are_one_line_errors(tmp_path, capsys, tiny_model_dir) -> None:
    import shutil

    notok, corrupt = tmp_path / "notok", tmp_path / "corrupt"
    notok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, notok / name)
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:1000])
    gen = ["generate", "--transcript", "hi", "--precision", "fp32", "--out", str(tmp_path / "p.csv"), "--model"]
    one_line_error(capsys, [*gen, str(notok)], "no tokenizer files")
    one_line_error(capsys, [*gen, str(corrupt)], "error: --model: ", "corrupt", "cannot load")
    noweights = tmp_path / "noweights"  # config and tokenizer, no weights: named, and `train` writes no run dir
    shutil.copytree(tiny_model_dir, noweights, ignore=shutil.ignore_patterns("*.safetensors"))
    one_line_error(capsys, [*gen, str(noweights)], f"--model: {noweights}: the directory has no model weights",
                   "model.safetensors")
    from helpers import write_splits

    from vrp.records import Comment, Video

    write_splits(tmp_path / "ds", [Video("v", "t", "words", [Comment("c")])], [])
    one_line_error(capsys, ["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--model",
                            str(noweights)], "no model weights")
    assert not (tmp_path / "run").exists()


def test_garbage_gguf_is_an_error_and_leaves_no_cache_dir(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VRP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "junk.gguf").write_bytes(b"\x00garbage" * 500)
    one_line_error(capsys, ["generate", "--model", str(tmp_path / "junk.gguf"), "--transcript", "hi", "--out",
                            str(tmp_path / "p.csv")], "junk.gguf", "GGUF")
    leftovers = list((tmp_path / "cache").rglob("*")) if (tmp_path / "cache").exists() else []
    assert [p for p in leftovers if p.is_dir() and p.name != "models"] == []


def test_target_modules_names_regex_and_tied_embeddings(tokenizer) -> None:
    """One string of names becomes a list; a broken list or regex, an unknown name in a list and a tied embedding
    are ConfigErrors naming `target_modules` (were a re.error traceback, a silent partial adapter, and a merge that
    changed the input embeddings too)."""
    import torch

    from vrp.adapter import attach_lora
    from vrp.lora import LoraSettings
    from vrp.precision import Precision
    from vrp.train.config import TrainConfig

    assert TrainConfig(target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]
    assert TrainConfig(target_modules=r".*\.(q|v)_proj").target_modules == r".*\.(q|v)_proj"
    for bad, needle in (("[q_proj", "is not a JSON list"), ("(q_proj", "neither module names nor a regular exp")):
        with pytest.raises(ConfigError, match=re.escape(needle)) as e:
            TrainConfig(target_modules=bad)
        assert e.value.field == "target_modules"
    fp32 = Precision("cpu", torch.float32, None)
    with pytest.raises(ConfigError, match=r"no module named \['nonexistent'\] in LlamaForCausalLM; its linear layers "
                                          r"are \[.*'q_proj'"):
        attach_lora(tiny_llama(tokenizer), LoraSettings(target_modules=["q_proj", "nonexistent"]), fp32)
    for targets in (["lm_head"], ["embed_tokens", "q_proj"], "lm_head"):
        with pytest.raises(ConfigError, match="share one weight"):
            attach_lora(tiny_llama(tokenizer), LoraSettings(target_modules=targets), fp32)
    with pytest.raises(ConfigError, match=r"^lora_r: 1000000000000 is larger than any layer of the model is wide \(\d+\)"):
        attach_lora(tiny_llama(tokenizer), LoraSettings(r=10 ** 12), fp32)
    untied = attach_lora(tiny_llama(tokenizer, tie_word_embeddings=False), LoraSettings(target_modules=["lm_head"]),
                         fp32)
    assert any("lm_head.lora_A" in n for n, _ in untied.named_parameters())


def test_prepare_takes_a_csv_transcript_longer_than_the_csv_module_limit(tmp_path) -> None:
    """A 300,000-character transcript cell (a long talk) is read, not refused as a field over csv's 131,072 limit."""
    from vrp.artifacts import DatasetDir

    long = " ".join(["word"] * 60_000)
    src = table(tmp_path / "long.csv", title=["a", "b"], transcript=[long, "short one"], comment=["c1", "c2"])
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--val-fraction", "0.5"]) == 0
    d = DatasetDir(tmp_path / "ds")
    videos = d.train_videos() + d.validation_videos()
    assert sorted(len(v.transcript) for v in videos) == [len("short one"), len(long)]


def test_lone_surrogates_are_errors_naming_file_and_field_everywhere(tmp_path, capsys) -> None:
    """JSON's lone `\\ud800` escape (or a non-UTF-8 argument) in a transcript file, a dataset/collect record or a
    command-line text is a one-line error naming where (was a TypeError / UnicodeEncodeError traceback, a 500)."""
    from vrp.artifacts import CollectDir
    from vrp.records import Video
    from vrp.transcripts import parse_transcript_bytes

    api = b'[{"text": "bad \\ud800 half", "start": 0, "duration": 1}]'
    with pytest.raises(VrpError, match=r"^x.json\[0\]: 'text' holds an unpaired surrogate U\+D800 at character 4"):
        parse_transcript_bytes(api, "x.json")
    with pytest.raises(VrpError, match=r"^s.json\[0\]: 'text' holds an unpaired surrogate"):
        parse_transcript_bytes(b'[{"start": 0, "end": 1, "text": "a \\udc00"}]', "s.json")
    with pytest.raises(VrpError, match=r"^c.json3: events\[0\].segs holds an unpaired surrogate"):
        parse_transcript_bytes(b'{"events": [{"tStartMs": 0, "segs": [{"utf8": "a \\ud800"}]}]}', "c.json3")
    with pytest.raises(VrpError, match=r"v.jsonl:3: field 'comments\[1\].text' holds an unpaired surrogate U\+DFFF"):
        Video.from_json({"video_id": "v", "transcript": "t", "comments": [{"text": "ok"}, {"text": "x\udfff"}]},
                        "v.jsonl:3")
    (tmp_path / "talk.json").write_bytes(api)
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(tmp_path / "talk.json"), "--out",
                            str(tmp_path / "p.csv")], "talk.json[0]: 'text' holds an unpaired surrogate")
    one_line_error(capsys, ["generate", "--model", "m", "--transcript", "caf\udce9", "--out",
                            str(tmp_path / "p.csv")], "error: --transcript: the text holds the byte 0xE9 at character 3, which is not UTF-8 text")
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / CollectDir.VIDEOS).write_text(json.dumps({"id": "v1", "title": "t", "transcript": "hello there",
                                                    "comments": [{"text": "nice \ud800"}]}) + "\n")
    one_line_error(capsys, ["prepare", str(cd), "--out", str(tmp_path / "ds")],
                   "comments[0].text holds an unpaired surrogate U+D800")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "p.csv").exists()
