"""Like tiers end to end on a fixture collect dir with like counts: prepare -> train with tiers (a tiny model that
overfits) -> generate with a tier -> serve a request with a tier (JSON and file upload) -> evaluate's tier section.

Every video has the same three comments: "this is the best video ever" (most liked), "nice" and "first" (no likes),
so a model that learned the markers writes the top comment for tier top and the ignored one for tier low."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import FakeEmbedder, tiny_llama

from vrp.cli import main

pytestmark = pytest.mark.e2e  # the whole chain through the real CLI (a lane of its own)

TOP, TYPICAL, LOW = "this is the best video ever", "nice", "first"
TOPICS = ["baking bread", "fixing bikes", "painting walls", "growing tomatoes", "learning chess", "running fast",
          "cooking rice", "building shelves"]


def write_collect_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    with open(path / "videos.jsonl", "w", encoding="utf-8") as f:
        for i, topic in enumerate(TOPICS):
            comments = [(LOW, "0"), (TOP, "1.2K"), (TYPICAL, 15)]  # YouTube display text is parsed
            f.write(json.dumps({
                "id": f"vid{i:08d}", "title": f"All about {topic}",
                "transcript": [{"start": 0.0, "end": 2.0, "text": f"today we talk about {topic}"},
                               {"start": 2.0, "end": 4.0, "text": "thanks for watching"}],
                "comments": [{"id": f"c{i}-{j}", "text": t, "like_count": n, "author_is_uploader": False,
                              "is_pinned": False, "parent": "root"} for j, (t, n) in enumerate(comments)]}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiered_run(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> tuple[Path, Path]:
    """(dataset dir, run dir) of a tiny model trained with tiers on the fixture collect dir."""
    root = tmp_path_factory.mktemp("tiers")
    collect = write_collect_dir(root / "collect")
    assert main(["prepare", str(collect), "--out", str(root / "ds"), "--val-fraction", "0.25"]) == 0
    model_dir = root / "model"  # hidden 128: room to separate three texts from 49k random logits (cf. test_train_loop)
    tiny_llama(tokenizer, hidden_size=128, intermediate_size=256, initializer_range=0.15).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    assert main(["train", "--data", str(root / "ds"), "--out", str(root / "run"), "--model", str(model_dir),
                 "--tiers", "--tier-marker-dropout", "0", "--max-steps", "40", "--precision", "fp32",
                 "--max-prompt-tokens", "64", "--max-row-tokens", "256", "--lora-r", "16", "--lora-alpha", "32",
                 "--lora-dropout", "0", "--learning-rate", "1e-2", "--batch-size", "6", "--warmup-steps", "1",
                 "--lr-scheduler", "constant_with_warmup", "--eval-every", "40", "--save-every", "40"]) == 0
    return root / "ds", root / "run"


def test_prepared_collect_dir_keeps_likes_and_run_records_tiers(tiered_run):
    ds, run = tiered_run
    from vrp.artifacts import DatasetDir
    from vrp.rundir import RunDir
    from vrp.tiers import comment_tiers

    videos = DatasetDir(ds).train_videos()
    assert len(videos) == 6 and [c.like_count for c in videos[0].comments] == [1200, 15, 0]
    assert comment_tiers(videos[0].comments, "likes") == ["top", "typical", "low"]
    saved = RunDir(run).config()
    assert saved["tiers"] is True and saved["tier_source"] == "likes" and saved["tier_marker_dropout"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_train_loss"] < 0.05 < 10 < metrics["base_val_nll"]


def test_generate_with_a_tier(tiered_run, tmp_path: Path):
    import pandas as pd

    ds, run = tiered_run
    got = {}
    for tier in ("top", "typical", "low"):
        out = tmp_path / f"{tier}.jsonl"
        assert main(["generate", "--run", str(run), "--input", str(ds), "--tier", tier, "--preset", "greedy",
                     "--max-new-tokens", "12", "--precision", "fp32", "--out", str(out)]) == 0
        df = pd.read_json(out, lines=True)
        assert len(df) == 2 and set(df["tier"]) == {tier}
        got[tier] = set(df["comment"])
    assert got == {"top": {TOP}, "typical": {TYPICAL}, "low": {LOW}}


def test_serve_request_with_a_tier(tiered_run, tokenizer):
    from starlette.testclient import TestClient

    from vrp.artifacts import DatasetDir
    from vrp.model import load_for_inference
    from vrp.rundir import RunDir, prompt_settings
    from vrp.serve.app import create_app
    from vrp.serve.config import ServeConfig
    from vrp.tiers import run_tier_source

    ds, run = tiered_run
    video = DatasetDir(ds).validation_videos()[0]  # the tiny model knows only prompts like its training ones
    rd = RunDir(run)
    app = create_app(ServeConfig(default_max_new_tokens=12), load_for_inference(run=rd, precision="fp32"),
                     prompt_settings(rd), tiers=run_tier_source(rd) is not None)
    with TestClient(app, raise_server_exceptions=False) as client:
        info = client.get("/v1/info").json()["tiers"]
        assert info["trained"] is True and info["labels"]["low"] == "an ignored comment"
        body = {"title": video.title, "transcript": video.transcript, "preset": "greedy", "num_comments": 1}
        r = client.post("/v1/predict", json={**body, "tier": "top"})
        assert r.status_code == 200 and r.json()["tier"] == "top"
        assert [c["text"] for c in r.json()["comments"]] == [TOP]
        r = client.post("/v1/predict/file", files={"file": ("talk.txt", video.transcript.encode(), "text/plain")},
                        data={"title": video.title, "preset": "greedy", "num_comments": "1", "tier": "low"})
        assert r.status_code == 200 and [c["text"] for c in r.json()["comments"]] == [LOW]
        r = client.post("/v1/predict", json={**body, "tier": "best"})
        assert r.status_code == 422 and r.json()["details"][0]["loc"] == "body.tier"


def test_evaluate_has_a_tier_section(tiered_run, tmp_path: Path, monkeypatch, capsys):
    import vrp.embeddings

    monkeypatch.setattr(vrp.embeddings, "load_embedder", lambda: FakeEmbedder())
    ds, run = tiered_run
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(ds), "--run", str(run), "--out", str(out), "--presets", "greedy",
                 "--max-new-tokens", "12", "--num-candidates", "4", "--precision", "fp32", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "run: tier accuracy 1.000 (chance 0.333, 6 comments)" in printed
    tiers = json.loads((out / "metrics.json").read_text())["tiers"]
    assert tiers["source"] == "likes" and set(tiers["models"]) == {"base:" + Path(tiers_base(run)).name, "run"}
    a = tiers["models"]["run"]["accuracy"]
    assert a["confusion"] == {t: {p: int(t == p) * 2 for p in ("top", "typical", "low")}
                              for t in ("top", "typical", "low")}
    assert tiers["models"]["run"]["pairwise"]["top"] == {"marker": "top", "videos": 2, "share": 1.0,
                                                         "ci95": [1.0, 1.0], "chance": 0.5}
    gen = tiers["models"]["run"]["generation"]
    assert set(gen) == {"top", "typical", "low"} and gen["top"]["generated"]["outputs"] == 2
    assert tiers["models"]["base:" + Path(tiers_base(run)).name]["generation"] == {}  # the base model generates none
    real = tiers["real"]["tiers"]
    assert real["top"]["words"] == 6 and real["low"]["words"] == 1 and real["top"]["median_likes"] == 1200
    report = (out / "report.md").read_text()
    assert "## 5. Like tiers: top, typical and ignored comments" in report and "| top − low per video" in report
    assert "## 6. Timing (seconds)" in report  # numbered in order: no side-by-side section 5 without seed results
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["comment"] for r in rows if r.get("tier") == "low"} == {LOW}


def tiers_base(run: Path) -> str:
    """The base model of the run, as `vrp evaluate` labels it."""
    from vrp.rundir import RunDir

    return RunDir(run).model_spec()
