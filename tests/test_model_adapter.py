"""A damaged adapter file of a run (`adapter_config.json` that is not JSON) is named in one line by `vrp generate`
and `vrp export` before the base model's weights are loaded, not after (the fp32 base of an export can take minutes
and gigabytes to load)."""
from __future__ import annotations

import pytest
from helpers import one_line_error


@pytest.fixture
def no_weights(monkeypatch):
    """Loading a base model's weights fails the test: the damaged file must be named first."""
    import vrp.model

    def refuse(*a, **k):
        raise AssertionError("the base model's weights were loaded")

    monkeypatch.setattr(vrp.model, "load_base_model", refuse)


def test_a_damaged_adapter_config_is_named_before_the_weights_load(tmp_path, tiny_model_dir, capsys,
                                                                   no_weights) -> None:
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\nmax_prompt_tokens: 64\nprompt_format: plain\n")
    (run / "adapter" / "adapter_config.json").write_text("{")
    bad = f"{run / 'adapter' / 'adapter_config.json'}:1: invalid JSON"
    one_line_error(capsys, ["generate", "--run", str(run), "--title", "T", "--transcript", "x", "--out",
                            str(tmp_path / "p.csv")], bad)
    one_line_error(capsys, ["export", "--run", str(run), "--out", str(tmp_path / "ex"), "--format", "hf"], bad)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "ex").exists()
