"""`vrp export` (`vrp.export`): merged Hugging Face weights equal base + adapter, the GGUF file read back by transformers'
GGUF loader gives the original tokens and the merged model's logits, the Ollama Modelfile's TEMPLATE renders vrp's
prompt and stops at vrp's stop tokens, `vrp generate --print-prompt`, and bad inputs; with llama-cpp-python
installed, llama.cpp's greedy comment from the exported GGUF equals vrp's.

The run is a tiny random Llama (initializer range 0.1, so that attention and the q/k layout matter to the logits)
over the real SmolLM2 tokenizer, with a LoRA adapter of random, non-zero weights on every linear layer."""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import torch
from helpers import chat_tokenizer, one_line_error, tiny_llama, tiny_train_config

from vrp.records import Video

VIDEOS = [
    Video("v1", "Sourdough in 3 steps", "hi everyone, today we bake bread 123 times: flour, water & salt. Enjoy!"),
    Video("v2", "", "no title, literal {{ .Prompt }} braces, “quotes”, café and 🍞 emoji"),
    Video("v3", "A long talk", " ".join(f"word{i}" for i in range(400))),  # cut to the 96-token budget
]


def make_run(root: Path, tokenizer, model_dir: Path, **overrides) -> Path:
    """A run dir as `vrp train` leaves it: config.yaml, adapter/, checkpoints/step-000002/ (same adapter)."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from vrp.rundir import RunDir

    run = root / "run"
    rd = RunDir(run)
    rd.create(resume=False, overwrite=False)
    rd.save_config(tiny_train_config(model_dir, max_prompt_tokens=96, prompt_format="chat", **overrides))
    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.2)
    rd.save_adapter(peft, tokenizer)
    ckpt = rd.checkpoint_dir(2)
    shutil.copytree(run / "adapter", ckpt / "adapter")
    (ckpt / "state.json").write_text(json.dumps({"step": 2}))
    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("export-base")
    tiny_llama(tokenizer, initializer_range=0.1).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer, model_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("export-run"), tokenizer, model_dir)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run_dir) -> tuple[Path, dict]:
    from vrp.export.config import ExportConfig
    from vrp.export.run import export

    out = tmp_path_factory.mktemp("exports") / "all"
    return out, export(ExportConfig(run=str(run_dir), out=str(out), format="hf,gguf,ollama", gguf_type="f16"))


def unmerged(run_dir: Path, model_dir: Path):
    """The base model + the run's adapter as PEFT applies it (not merged), fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(run_dir / "adapter")).eval()


def prompts(tok) -> list[list[int]]:
    from vrp.prompts import PromptConfig, build_prompt_ids

    return [build_prompt_ids(tok, v.title, v.transcript, PromptConfig(max_prompt_tokens=96)) for v in VIDEOS]


def test_hf_export_is_base_plus_adapter_and_stops_as_vrp(exported, run_dir: Path, model_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vrp.decoding import generate_comments
    from vrp.prompts import stop_token_ids

    out, manifest = exported
    merged = AutoModelForCausalLM.from_pretrained(out / "hf").eval()  # nothing but the directory
    hf_tok = AutoTokenizer.from_pretrained(out / "hf")
    reference = unmerged(run_dir, model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert merged.dtype == torch.float32 and manifest["hf_dtype"] == "float32"
    for ids in prompts(tokenizer):
        x = torch.tensor([ids])
        with torch.no_grad():
            want, got, plain = reference(x).logits, merged(x).logits, base(x).logits
        assert (want - got).abs().max() < 1e-4
        assert (want - plain).abs().max() > 0.05  # the adapter changes the model: the check above can fail
        a = generate_comments(reference, tokenizer, ids, "greedy", max_new_tokens=12)[0]
        b = generate_comments(merged, hf_tok, ids, "greedy", max_new_tokens=12)[0]
        assert a.token_ids == b.token_ids and a.text == b.text
    assert merged.generation_config.eos_token_id == stop_token_ids(tokenizer, None, "chat") == [2]
    assert merged.generation_config.top_p == 0.9 and merged.generation_config.temperature == 0.8
    assert hf_tok.chat_template == tokenizer.chat_template
    sample = "Title: x\nTranscript: 42 cafés 🍞 <|im_start|>"
    assert hf_tok(sample, add_special_tokens=False).input_ids == tokenizer(sample, add_special_tokens=False).input_ids
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == set(manifest["files"]) | {"export.json"}
    assert json.loads((out / "export.json").read_text()) == manifest
    from vrp.files import sha256_file

    assert all(sha256_file(out / name) == digest for name, digest in manifest["files"].items())
    assert manifest["base_model"] == str(model_dir) and manifest["checkpoint"].startswith("adapter")
    from vrp.files import current_umask

    assert {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {0o666 & ~current_umask()}
    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's private 0700
    assert manifest["prompt"]["stop_tokens"] == [{"id": 2, "text": "<|im_end|>"}]


@pytest.mark.slow
def test_gguf_reads_back_with_the_original_tokens(exported, tokenizer) -> None:
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    out = exported[0]
    tok = AutoTokenizer.from_pretrained(out, gguf_file="model-f16.gguf")
    text = "Title: Bake 2024 loaves!\nTranscript: héllo wörld 🍞 “quoted” <|im_start|>user\n  spaces\tand tabs"
    assert tok(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids
    assert tok.chat_template == tokenizer.chat_template and tok.eos_token_id == tokenizer.eos_token_id
    fields = GGUFReader(out / "model-f16.gguf").fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # how vrp's tokenizer splits text (module doc)
    assert fields["tokenizer.ggml.eot_token_id"].contents() == 2 == fields["tokenizer.ggml.eos_token_id"].contents()
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert fields["general.file_type"].contents() == 1  # MOSTLY_F16


@pytest.mark.slow
@pytest.mark.parametrize("gguf_type, tolerance", [("f16", 0.02), ("bf16", 0.1), ("q8_0", 0.2)])
def test_gguf_logits_match_the_merged_model(exported, tmp_path_factory, run_dir: Path, model_dir: Path, tokenizer,
                                            gguf_type: str, tolerance: float) -> None:
    """Within the type's rounding (logits here reach about 3; a missing q/k permutation is off by about 1)."""
    from transformers import AutoModelForCausalLM

    from vrp.export.config import ExportConfig
    from vrp.export.run import export

    out = exported[0]
    if gguf_type != "f16":
        out = tmp_path_factory.mktemp("exports") / gguf_type
        export(ExportConfig(run=str(run_dir), out=str(out), format="gguf", gguf_type=gguf_type))
        assert sorted(p.name for p in out.iterdir()) == ["export.json", f"model-{gguf_type}.gguf"]
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=f"model-{gguf_type}.gguf", dtype=torch.float32)
    reference = unmerged(run_dir, model_dir)
    for ids in prompts(tokenizer):
        x = torch.tensor([ids])
        with torch.no_grad():
            want, got = reference(x).logits, model.eval()(x).logits
        assert (want - got).abs().max() < tolerance, (want - got).abs().max()


def test_permutation_matters(tokenizer) -> None:
    """The q/k row permutation undone by transformers' loader: permuting and un-permuting is the identity, and the
    permuted weight differs (so the logits test above would catch a missing or wrong permutation)."""
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from vrp.export.gguf import permute_qk

    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)  # 4 heads of head_dim 8
    p = permute_qk(w, 4)
    assert not np.array_equal(p, w)
    assert np.array_equal(p[:2], w[[0, 4]]) and np.array_equal(p[8:10], w[[8, 12]])  # head 1 starts at row 8
    assert np.array_equal(LlamaTensorProcessor()._reverse_permute_weights(p, 4, 4), w)


def test_gguf_plan_and_what_the_writer_refuses(tokenizer) -> None:
    """Tensor names and types without writing a file: an untied LM head is written as `output.weight`; q8_0 rows
    that are not a multiple of 32 values long fall back to f16, 1-D tensors stay f32; RoPE scaling, biases and
    pre-tokenizers llama.cpp does not name are refused with the converter as the alternative."""
    from gguf import GGMLQuantizationType as Q

    from vrp.errors import VrpError
    from vrp.export.gguf import _plan, check_supported, pre_tokenizer_name

    untied = tiny_llama(tokenizer, hidden_size=48, tie_word_embeddings=False)  # rows of 48 values: no q8_0 blocks
    plan = {name: qtype for name, _, _, qtype in _plan(untied, "q8_0")}
    assert plan["output.weight"] == Q.F16 and plan["blk.0.ffn_down.weight"] == Q.Q8_0  # ffn_down rows: 64 values
    assert plan["blk.1.attn_q.weight"] == Q.F16 and plan["output_norm.weight"] == Q.F32
    assert "output.weight" not in {name for name, *_ in _plan(tiny_llama(tokenizer), "f16")}  # tied: one tensor
    assert check_supported(untied.config, tokenizer) == "gpt-2"
    for change, needle in (({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE scaling 'linear'"),
                           ({"attention_bias": True}, "attention biases")):
        with pytest.raises(VrpError, match=f"{needle}.*convert_hf_to_gguf.py"):
            check_supported(tiny_llama(tokenizer, **change).config, tokenizer)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    assert pre_tokenizer_name({**byte_level, "add_prefix_space": True}) is None
    assert pre_tokenizer_name({"type": "Metaspace", "replacement": "\u2581"}) is None


def parse_modelfile(text: str) -> dict:
    """The instructions of a Modelfile as Ollama's parser reads them (values in \"\"\" or \" quotes)."""
    found: dict = {"stop": [], "parameters": {}}
    for m in re.finditer(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER) (?:(\w+) )?("""(.*?)"""|"([^"\n]*)"|(\S+))$', text,
                         re.MULTILINE | re.DOTALL):
        cmd, param, value = m.group(1), m.group(2), next(g for g in m.groups()[3:] if g is not None)
        if cmd == "PARAMETER" and param == "stop":
            found["stop"].append(value)
        elif cmd == "PARAMETER":
            found["parameters"][param] = value
        else:
            found[cmd] = (param + " " if param else "") + value
    return found


def render_go(template: str, system: str, prompt: str) -> str:
    """A Go text/template renderer for the constructs the export writes: {{ .System }}, {{ .Prompt }} and string
    actions {{ "..." }}; anything else fails the test."""
    def action(m: re.Match) -> str:
        body = m.group(1).strip()
        if body == ".System":
            return system
        if body == ".Prompt":
            return prompt
        assert body.startswith('"') and body.endswith('"'), body
        return json.loads(body)

    return re.sub(r"\{\{(.*?)\}\}", action, template)


def test_modelfile_template_renders_vrp_prompt_and_stops(exported, tokenizer) -> None:
    from vrp.export.prompts import video_prompts
    from vrp.prompts import PromptConfig, build_prompt_ids

    out = exported[0]
    mf = parse_modelfile((out / "Modelfile").read_text())
    assert mf["FROM"] == "./model-f16.gguf" and (out / "model-f16.gguf").is_file()
    assert mf["stop"] == ["<|im_end|>"]  # exactly vrp's stop tokens
    assert mf["parameters"] == {"temperature": "0.8", "top_p": "0.9", "top_k": "0", "min_p": "0",
                                "repeat_penalty": "1", "num_predict": "150", "num_ctx": str(96 + 150)}
    run = exported[1]["run"]
    for v, vp in zip(VIDEOS, video_prompts(VIDEOS, run=run)):
        text = render_go(mf["TEMPLATE"], mf["SYSTEM"], vp.user)
        assert text == vp.text
        assert tokenizer(text, add_special_tokens=False).input_ids == build_prompt_ids(
            tokenizer, v.title, v.transcript, PromptConfig(max_prompt_tokens=96))
    assert vp.transcript_truncated and not video_prompts(VIDEOS[:1], run=run)[0].transcript_truncated


@pytest.mark.parametrize("name", ["llama3", "gemma", "phi3", "mistral", "llama2"])
def test_template_layout_for_other_chat_formats(tokenizer_dir: Path, name: str) -> None:
    """Templates with their own markup, and ones without a system role (the system text opens the user turn)."""
    from vrp.export.ollama import go_template, prompt_layout
    from vrp.prompts import PromptConfig, fitted_transcript, prompt_text, user_message

    tok = chat_tokenizer(tokenizer_dir, name)
    pcfg = PromptConfig(max_prompt_tokens=96)
    layout = prompt_layout(tok, pcfg)
    assert layout.system == pcfg.system_prompt.strip()
    for v in VIDEOS:
        cut = fitted_transcript(tok, v.title, v.transcript, pcfg)
        want = prompt_text(tok, v.title, cut, pcfg)
        assert render_go(go_template(layout), layout.system, user_message(v.title, cut)) == want
        assert layout.render(user_message(v.title, cut)) == want


def test_plain_format_template_and_tier_marker(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from vrp.export.ollama import go_template, prompt_layout
    from vrp.prompts import PromptConfig, build_prompt_ids, fitted_transcript, stop_token_ids, user_message
    from vrp.tiers import marker_ids

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None  # a base model
    pcfg = PromptConfig(max_prompt_tokens=96, prompt_format="plain")
    layout = prompt_layout(tok, pcfg, "[most liked comment]\n")
    assert go_template(layout) == "{{ .Prompt }}\nComment:\n[most liked comment]\n" and layout.system == ""
    v = VIDEOS[0]
    cut = fitted_transcript(tok, v.title, v.transcript, pcfg)
    text = render_go(go_template(layout), "", user_message(v.title, cut))
    want = build_prompt_ids(tok, v.title, v.transcript, pcfg) + marker_ids(tok, "top")
    assert tok(text, add_special_tokens=False).input_ids == want
    assert stop_token_ids(tok, None, "plain") == [tok.eos_token_id]


def test_print_prompt(exported, tmp_path: Path, capsys) -> None:
    from vrp.cli import main

    run = exported[1]["run"]
    v = VIDEOS[2]
    assert main(["generate", "--run", run, "--title", v.title, "--transcript", v.transcript,
                 "--print-prompt", "user"]) == 0
    user = capsys.readouterr().out
    assert user.startswith("Title: A long talk\nTranscript: word0 word1") and "word399" not in user
    assert main(["generate", "--run", run, "--title", v.title, "--transcript", v.transcript,
                 "--print-prompt", "text"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("<|im_start|>system\nYou are a viewer") and text.endswith(
        user + "<|im_end|>\n<|im_start|>assistant\n")
    assert main(["generate", "--run", run, "--title", v.title, "--transcript", v.transcript,
                 "--print-prompt", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == text and row["user"] == user and row["prompt_tokens"] <= 96 and row["transcript_truncated"]
    table = tmp_path / "two.csv"
    table.write_text("title,transcript\nfirst,one two\nsecond,three four\n", encoding="utf-8")
    one_line_error(capsys, ["generate", "--run", run, "--input", str(table), "--print-prompt", "user"],
                   "--print-prompt: user prints the prompt of one video and the input has 2", "--max-videos 1")
    assert main(["generate", "--run", run, "--input", str(table), "--print-prompt", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["user"] for r in rows] == ["Title: first\nTranscript: one two", "Title: second\nTranscript: three four"]
    one_line_error(capsys, ["generate", "--run", run, "--title", "t", "--transcript", "x"],
                   "--out: is required (or use --print-prompt)")


# --- bad input ------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line(exported, run_dir: Path, tmp_path: Path, capsys) -> None:
    from vrp.rundir import RunDir

    out = str(tmp_path / "x")
    one_line_error(capsys, ["export", "--run", str(run_dir), "--out", out, "--checkpoint", "step-000099"],
                   "--checkpoint: step-000099 not found", "step-000002")
    one_line_error(capsys, ["export", "--run", str(run_dir), "--out", out, "--format", "hf,zip"],
                   "--format: unknown format 'zip'")
    one_line_error(capsys, ["export", "--run", str(run_dir), "--out", out, "--tier", "top"],
                   "--tier: 'top' needs a run trained with like tiers")
    one_line_error(capsys, ["export", "--run", str(tmp_path), "--out", out], "--run:", "not a vrp run directory")
    one_line_error(capsys, ["export", "--out", out], "--run: is required")
    no_adapter = tmp_path / "unfinished"
    RunDir(no_adapter).create(resume=False, overwrite=False)
    (no_adapter / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    one_line_error(capsys, ["export", "--run", str(no_adapter), "--out", out], "--run:", "has no adapter/",
                   "--checkpoint latest")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(capsys, ["export", "--run", str(run_dir), "--out", str(other)], "--out:", "not a vrp export")
    one_line_error(capsys, ["export", "--run", str(run_dir), "--out", str(other), "--overwrite"], "--out:",
                   "not a vrp export directory")
    one_line_error(capsys, ["export", "--run", str(run_dir), "--out", str(exported[0])], "--out:",
                   "pass --overwrite")
    assert (other / "notes.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_unsupported_architecture_is_refused_before_loading(tmp_path: Path, tokenizer, capsys) -> None:
    from transformers import Phi3Config, Phi3ForCausalLM

    base = tmp_path / "phi3"
    Phi3ForCausalLM(Phi3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = make_run(tmp_path, tokenizer, base)
    one_line_error(capsys, ["export", "--run", str(run), "--out", str(tmp_path / "out"), "--format", "ollama"],
                   "architecture phi3 (Phi3ForCausalLM) is not supported", "convert_hf_to_gguf.py")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_full_disk_leaves_no_file_and_keeps_the_earlier_export(run_dir: Path, tmp_path: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf

    from vrp.cli import main

    out = tmp_path / "exp"
    assert main(["export", "--run", str(run_dir), "--out", str(out), "--format", "gguf"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    for target, extra in ((tmp_path / "new", []), (out, ["--overwrite"])):
        one_line_error(capsys, ["export", "--run", str(run_dir), "--out", str(target), "--format", "gguf,ollama",
                                *extra], f"error: {target}: cannot write the export (No space left on device)")
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary directory left


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_export(run_dir: Path, tmp_path: Path) -> None:
    from vrp.export.config import ExportConfig
    from vrp.export.run import export

    out = tmp_path / "exp"
    export(ExportConfig(run=str(run_dir), out=str(out), format="gguf", gguf_type="q8_0"))
    m = export(ExportConfig(run=str(run_dir), out=str(out), format="gguf", checkpoint="step-000002", overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model-f16.gguf"]
    assert m["checkpoint"] == "step-000002" and m["adapter"].endswith("step-000002/adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


@pytest.mark.slow
def test_4bit_run_is_dequantized_then_merged(tmp_path: Path, tokenizer, model_dir: Path) -> None:
    """A QLoRA run: vrp runs the NF4 base with the adapter unmerged; the export dequantizes the NF4 weights to fp32
    and merges into those, which gives the same logits."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from vrp.export.config import ExportConfig
    from vrp.export.run import export
    from vrp.model import load_for_inference

    run = make_run(tmp_path, tokenizer, model_dir, quantization="4bit")
    m = export(ExportConfig(run=str(run), out=str(tmp_path / "out"), format="hf"))
    assert "NF4 weights were dequantized to fp32" in m["base_weights"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf").eval()
    assert "quantization_config" not in json.loads((tmp_path / "out" / "hf" / "config.json").read_text())
    vrp_model, _, _ = load_for_inference(run=str(run), precision="fp32", device="cpu")
    full = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for ids in prompts(tokenizer):
        x = torch.tensor([ids])
        with torch.no_grad():
            want, got, unrounded = vrp_model(x).logits, merged(x).logits, full(x).logits
        assert (want - got).abs().max() < 1e-4
        assert (want - unrounded).abs().max() > 1e-3  # NF4 rounding shows: the merge is not into the fp32 base


@pytest.mark.slow
def test_bench_generate(run_dir: Path, tmp_path: Path, capsys) -> None:
    """`vrp bench generate` times vrp and, when llama-cpp-python is installed, llama.cpp on the same prompts."""
    from vrp.bench.config import BenchGenerateConfig
    from vrp.cli import main
    from vrp.errors import ConfigError

    out = tmp_path / "bench.json"
    assert main(["bench", "generate", "--run", str(run_dir), "--preset", "greedy", "--num-comments", "1",
                 "--max-new-tokens", "4", "--precision", "fp32", "--no-write", "--json-out", str(out)]) == 0
    bench = json.loads(out.read_text())
    assert bench["prompts"] == 1 and bench["engines"]["vrp"]["comments"] == 1
    assert bench["engines"]["vrp"]["mean_new_tokens"] <= 4 and bench["engines"]["vrp"]["comments_per_s"] > 0
    llama = bench["engines"]["llama.cpp"]
    if "skipped" in llama:
        assert "llama-cpp-python is not installed" in llama["skipped"]
    else:
        assert llama["comments"] == 1 and bench["agreement"] == 1  # greedy: the same comment in both engines
    assert "| vrp (cpu-fp32) |" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="preset: choose from greedy, nucleus"):
        BenchGenerateConfig(run=str(run_dir), preset="beam")
    with pytest.raises(ConfigError, match="num_comments: greedy gives exactly one comment"):
        BenchGenerateConfig(run=str(run_dir), preset="greedy", num_comments=5)


# --- llama.cpp (optional: pip install 'vrp[llamacpp]') --------------------------------------------------------------
@pytest.mark.slow
def test_llama_cpp_greedy_comment_equals_vrp(exported, run_dir: Path, model_dir: Path, tokenizer) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from vrp.decoding import generate_comments
    from vrp.export.prompts import video_prompts

    out, manifest = exported
    llm = llama_cpp.Llama(model_path=str(out / "model-f16.gguf"), n_ctx=512, n_threads=1, verbose=False,
                          logits_all=False)
    reference = unmerged(run_dir, model_dir)
    try:
        for vp, ids in zip(video_prompts(VIDEOS, run=manifest["run"]), prompts(tokenizer)):
            assert llm.tokenize(vp.text.encode("utf-8"), add_bos=False, special=True) == ids
            want = generate_comments(reference, tokenizer, ids, "greedy", max_new_tokens=8)[0].token_ids
            got = []
            for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
                got.append(t)
                if len(got) == len(want) or t == 2:
                    break
            assert got == want
    finally:
        llm.close()
