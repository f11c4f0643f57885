"""Like tiers (`vrp.tiers`): the rules (ties, missing likes, one-comment videos, seed ranks), where tiers come from,
markers and marker dropout, the training config and the clear errors; and the tier statistics of
`vrp.evaluate.tier_ranking` on hand-made scores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import one_line_error

from vrp.errors import ConfigError
from vrp.evaluate.tier_ranking import pairwise, real_comment_differences, tier_accuracy
from vrp.files import write_jsonl_atomic
from vrp.records import Comment, Video
from vrp.tiers import (
    assign_tiers,
    check_tier,
    comment_tiers,
    encode_tiered_video,
    marker_dropped,
    marker_ids,
    resolve_tier_source,
)
from vrp.train.config import TrainConfig


@pytest.mark.parametrize("likes, want", [
    ([10, 5, 5, 5, 0, 0], ["top", "typical", "typical", "typical", "low", "low"]),   # k = 2
    ([3, 3, 1], ["typical", "typical", "low"]),          # a tie across the top boundary is not top
    ([10, 0, 0, 0, 0, 0], ["top", "low", "low", "low", "low", "low"]),  # ties at the bottom are all ignored
    ([5, 3], ["top", "low"]),                            # two comments: one top, one low
    ([4, 4, 4], [None, None, None]),                     # equal likes: nothing rose to the top
    ([7], [None]),                                       # one comment: no tier
    ([5, None, 1], ["top", None, "low"]),                # unknown likes: no tier, the others among themselves
    ([None, 9, None], [None, None, None]),               # one known like count
    ([0, 2, 1], ["low", "top", "typical"]),              # input order is kept
])
def test_assign_tiers_rules(likes, want):
    assert assign_tiers(likes) == want


def test_tier_sizes_on_a_long_list():
    tiers = assign_tiers(list(range(20, 0, -1)))  # 20 distinct counts: k = floor(20 / 3) = 6
    assert tiers[:6] == ["top"] * 6 and tiers[-6:] == ["low"] * 6 and tiers[6:14] == ["typical"] * 8


def test_comment_tiers_by_rank_and_by_likes():
    seed = [Comment("most", rank=1), Comment("middle", rank=2), Comment("least", rank=3)]
    assert comment_tiers(seed, "rank") == ["top", "typical", "low"]
    assert comment_tiers(seed[:2], "rank") == ["top", "low"]  # the seed's one 2-comment video
    assert comment_tiers(seed, "likes") == [None, None, None]  # the seed has no like counts
    liked = [Comment("a", 3, 2), Comment("b", 40, 1)]
    assert comment_tiers(liked, "likes") == ["low", "top"]


def _videos(likes: list[list[int | None]]) -> list[Video]:
    return [Video(f"v{i}", "t", "words", [Comment(f"c{j}", n, j + 1) for j, n in enumerate(ls)])
            for i, ls in enumerate(likes)]


def test_resolve_tier_source():
    assert resolve_tier_source("auto", _videos([[5, 1], [None]]), None) == "likes"
    seed = _videos([[None, None, None]])
    assert resolve_tier_source("auto", seed, "seed xlsx (LLaMA-2 [INST] text)") == "rank"
    assert resolve_tier_source("rank", seed, None) == "rank"
    with pytest.raises(ConfigError, match="no like counts and its ranks are not like ranks") as e:
        resolve_tier_source("auto", seed, "table (title, transcript, comment)")
    assert e.value.field == "tiers"
    with pytest.raises(ConfigError, match="no comment gets a tier") as e:
        resolve_tier_source("auto", _videos([[5], [3, 3]]), None)
    assert e.value.field == "tiers"
    with pytest.raises(ConfigError, match=r"^tier_source: choose from .*, got 'views'$") as e:
        resolve_tier_source("views", seed, None)
    assert e.value.field == "tier_source"
    with pytest.raises(ConfigError, match=r"^tier_source: likes: no comment in the dataset has a like count; ") as e:
        resolve_tier_source("likes", seed, None)  # three comments, none with a like count: not "equal like counts"
    with pytest.raises(ConfigError, match=r"^tiers: no comment gets a tier from its like counts \(every video has "
                                          r"fewer than two comments with like counts, or"):
        resolve_tier_source("likes", _videos([[5, None], [3, 3]]), None)


def test_markers_and_dropout(tokenizer):
    ids = {t: marker_ids(tokenizer, t) for t in ("top", "typical", "low")}
    assert tokenizer.decode(ids["low"]) == "[least liked comment]\n"
    assert len({tuple(v) for v in ids.values()}) == 3 and marker_ids(tokenizer, "any") == []
    with pytest.raises(ConfigError, match=r"^tier: choose from .*, got 'best'$") as e:
        marker_ids(tokenizer, "best")
    assert e.value.field == "tier"
    draws = [marker_dropped(0, "v", i, 0.2) for i in range(3000)]
    assert 0.17 < sum(draws) / len(draws) < 0.23
    assert draws == [marker_dropped(0, "v", i, 0.2) for i in range(3000)]  # a fixed draw per comment
    assert draws != [marker_dropped(1, "v", i, 0.2) for i in range(3000)]  # ... that depends on the seed
    assert not any(marker_dropped(0, "v", i, 0.0) for i in range(100))


def test_encode_tiered_video_puts_markers_before_the_comments(tokenizer):
    from vrp.prompts import PromptConfig, encode_video

    cfg = PromptConfig(max_prompt_tokens=64)
    video = Video("x", "t", "some words", [Comment("low one", 0), Comment("  ", 9), Comment("top one", 20),
                                           Comment("mid", 5)])
    plain = encode_video(tokenizer, video, cfg)
    enc = encode_tiered_video(tokenizer, video, cfg, "likes")
    assert enc.completions == plain.completions and enc.prompt_ids == plain.prompt_ids
    # the blank comment is skipped before tiering, as encode_video skips it
    assert enc.contexts == [marker_ids(tokenizer, "low"), marker_ids(tokenizer, "top"), marker_ids(tokenizer, "typical")]
    dropped = [encode_tiered_video(tokenizer, video, cfg, "likes", dropout=0.5, seed=s).contexts for s in range(8)]
    assert any([] in c for c in dropped) and any([] not in c for c in dropped)
    alone = Video("y", "t", "w", [Comment("only", 3)])
    assert encode_tiered_video(tokenizer, alone, cfg, "likes").contexts == [[]]


def test_train_config_fields_and_check_tier():
    assert TrainConfig().tiers is False and TrainConfig().tier_source == "auto"
    for kw, field, why in (({"tier_marker_dropout": 1.0}, "tier_marker_dropout", r"must be in \[0, 1\), got 1.0$"),
                           ({"tier_source": "views"}, "tier_source", r"choose from .*, got 'views'$")):
        with pytest.raises(ConfigError, match=f"^{field}: {why}") as e:
            TrainConfig(**kw)
        assert e.value.field == field
    check_tier("any", False)
    check_tier("low", True)
    with pytest.raises(ConfigError, match="'top' needs a run trained with like tiers") as e:
        check_tier("top", False)
    assert e.value.field == "tier"


def test_training_with_tiers_on_data_without_likes_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path, capsys):
    data = tmp_path / "data"
    videos = [Video(f"v{i}", "t", "words " * 5, [Comment("a"), Comment("b")]) for i in range(3)]
    write_jsonl_atomic(data / "train.jsonl", (v.to_json() for v in videos))
    write_jsonl_atomic(data / "validation.jsonl", (v.to_json() for v in videos[:1]))
    (data / "manifest.json").write_text(json.dumps({"format": "table (title, transcript, comment)"}))
    one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
                            str(tiny_model_dir), "--tiers", "--precision", "fp32"],
                   "--tiers:", "no like counts and its ranks are not like ranks", "--tier-source rank")
    assert not (tmp_path / "run").exists()  # refused before the run dir is made


def test_generate_tier_on_an_untiered_run_is_a_clear_error(tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: smollm2-135m\ntiers: false\n")
    one_line_error(capsys, ["generate", "--run", str(run), "--transcript", "hello", "--tier", "top", "--out",
                            str(tmp_path / "o.jsonl")], "--tier:", "'top' needs a run trained with like tiers")
    one_line_error(capsys, ["generate", "--model", "smollm2-135m", "--transcript", "hello", "--tier", "best",
                            "--out", str(tmp_path / "o.jsonl")], "--tier:", "got 'best'")


def _rec(video: int, tier: str, top: float, typical: float, low: float, any_: float, tokens: int = 2) -> dict:
    return {"video": video, "tier": tier, "tokens": tokens,
            "logprob": {"top": top, "typical": typical, "low": low, "any": any_}}


def test_tier_accuracy_confusion_and_pairwise():
    recs = [_rec(0, "top", -1, -2, -3, -2), _rec(0, "typical", -5, -4, -6, -5), _rec(0, "low", -1, -2, -3, -9),
            _rec(1, "top", -4, -3, -5, -3), _rec(1, "low", -9, -9, -2, -1), _rec(1, "low", -8, -9, -9, -1)]
    a = tier_accuracy(recs)
    assert a["comments"] == 6 and a["accuracy"] == pytest.approx(3 / 6)
    assert a["chance"] == pytest.approx(3 / 6) and a["majority"] == "low"
    assert a["confusion"]["low"] == {"top": 2, "typical": 0, "low": 1}
    assert a["confusion"]["top"] == {"top": 1, "typical": 1, "low": 0}
    assert a["recall"] == {"top": 0.5, "typical": 1.0, "low": pytest.approx(1 / 3)}
    assert a["ci95"][0] <= a["accuracy"] <= a["ci95"][1]
    p = pairwise(recs, "top")
    # video 0: top -1/2 vs low -1/2: a tie (0.5); video 1: top -4/2 vs lows -9/2 and -8/2: both won (1.0)
    assert p["videos"] == 2 and p["share"] == pytest.approx(0.75) and p["chance"] == 0.5
    assert pairwise(recs, "any")["share"] == pytest.approx(0.5)  # video 0 won, video 1 lost
    assert pairwise([r for r in recs if r["tier"] != "low"], "top")["share"] is None


def _entry(records):
    return {"accuracy": tier_accuracy(records), "pairwise": {k: pairwise(records, k) for k in ("top", "any", "low")},
            "generation": {}}


def test_summary_and_report_say_when_no_video_has_both_a_top_and_a_low_comment():
    from vrp.evaluate.tier_ranking import tier_markdown, tier_summary

    no_low = [_rec(0, "top", -1, -2, -3, -2), _rec(0, "typical", -5, -4, -6, -5), _rec(1, "top", -4, -3, -5, -3)]
    line = tier_summary("run", _entry(no_low))
    assert line == ("run: tier accuracy 0.667 (chance 0.667, 3 comments); no held-out video has both a top and a "
                    "low comment, so there is no pairwise comparison")
    assert "nan" not in line
    both = [*no_low, _rec(1, "low", -9, -9, -2, -1)]
    assert tier_summary("run", _entry(both)).endswith("top comment more likely than low under the top marker in "
                                                       "1.000 of 1 videos")
    section = {"source": "likes", "markers": {}, "notes": [], "real": {"comments": 0},
               "models": {"run": _entry(no_low)}}
    report = "\n".join(tier_markdown(section))
    assert "Note: no held-out video has both a top and a low comment" in report and "nan" not in report


def test_summary_and_report_say_when_no_comment_has_a_tier():
    from vrp.evaluate.tier_ranking import tier_markdown, tier_summary

    line = tier_summary("base", _entry([]))
    assert line.startswith("base: no held-out comment has a tier, so there is no tier accuracy; no held-out video")
    section = {"source": "likes", "markers": {}, "notes": [], "real": {"comments": 0}, "models": {"base": _entry([])}}
    assert "Note: no held-out comment has a tier" in "\n".join(tier_markdown(section))


def test_real_comment_differences_without_a_model():
    class Embed:  # "thanks" is generic, everything else is not
        def encode(self, texts):
            import numpy as np

            return np.array([[1.0, 0.0] if t.startswith("thanks") else [0.0, 1.0] for t in texts])

    videos = [Video("a", "t", "w", [Comment("why is this so good? 😍", 90), Comment("thanks", 1),
                                    Comment("ok fine then", 5)]),
              Video("b", "t", "w", [Comment("what a long and thoughtful comment?", 50), Comment("thanks!", 0)])]
    r = real_comment_differences(videos, "likes", Embed(), Embed().encode(["thanks"]))
    top, low = r["tiers"]["top"], r["tiers"]["low"]
    assert (top["comments"], low["comments"], r["tiers"]["typical"]["comments"]) == (2, 2, 1)
    assert top["question"] == 1.0 and low["question"] == 0.0 and top["emoji"] == 0.5 and low["generic"] == 1.0
    assert top["words"] == pytest.approx((6 + 6) / 2) and low["words"] == 1.0 and top["median_likes"] == 70
    assert r["top_minus_low"]["words"]["mean"] == pytest.approx(5.0) and r["top_minus_low"]["words"]["videos"] == 2
    assert r["top_minus_low"]["generic"]["mean"] == -1.0
