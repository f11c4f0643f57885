"""Real-world uploads to `vrp serve` (`vrp.serve.uploads`): file names sent only in the RFC 5987/2231 extended form, a file part
without a file name, captions in other formats and encodings; no error message names a Python type."""
from __future__ import annotations

import re
from typing import Any

import pytest

from vrp.decoding import GeneratedComment
from vrp.serve.app import create_app
from vrp.serve.config import ServeConfig
from vrp.serve.uploads import NOT_A_FILE, add_plain_filenames, extended_filename, plain_message

BOUNDARY = "vrpBoundary7MA4YWxkTrZu0gW"
VTT = "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nbonjour, on fait du pain\n"
TYPE_NAME_RE = re.compile(r"<class '|UploadFile|\bstr\b|NoneType")


class Recorder:
    """A fake generator: records the decoded prompt text and returns `n` fixed comments."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.prompts = tokenizer, []

    def __call__(self, model, tok, prompt_ids, preset, n, max_new_tokens, seed):
        self.prompts.append(self.tokenizer.decode(prompt_ids))
        return [GeneratedComment(text=f"comment {i}", tokens=3, logprob=-1.0, finished=True) for i in range(n)]


def serve(tokenizer: Any) -> tuple[Any, Recorder]:
    from starlette.testclient import TestClient

    rec = Recorder(tokenizer)
    app = create_app(ServeConfig(), (object(), tokenizer, {"model": "tiny", "adapter": None, "precision": "fp32"}),
                     generate_fn=rec)
    return TestClient(app, raise_server_exceptions=False), rec


def multipart(disposition: str, content: bytes, extra: dict[str, str] | None = None) -> bytes:
    """A multipart/form-data body: one part with the given Content-Disposition parameters, then plain fields."""
    parts = [f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\nContent-Type: text/vtt\r\n\r\n"
             .encode() + content + b"\r\n"]
    for k, v in (extra or {}).items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(c: Any, body: bytes) -> Any:
    return c.post("/v1/predict/file", content=body,
                  headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


@pytest.mark.parametrize("disposition", [
    "name=\"file\"; filename*=UTF-8''caf%C3%A9.vtt",  # the example (RFC 5987)
    "name=\"file\"; filename*0*=UTF-8''caf%C3%A9; filename*1=\".vtt\"",  # RFC 2231 continuations
    "name=\"file\"; filename*=iso-8859-1'fr'caf%E9.vtt",  # RFC 5987's other charset, with a language
])
def test_upload_named_only_by_extended_filename_is_accepted(tokenizer, disposition):
    c, rec = serve(tokenizer)
    r = post(c, multipart(disposition, VTT.encode(), {"num_comments": "2"}))
    assert r.status_code == 200, r.text
    assert len(r.json()["comments"]) == 2
    assert "bonjour, on fait du pain" in rec.prompts[0] and "-->" not in rec.prompts[0]  # parsed as WebVTT


def test_plain_filename_stays_authoritative_and_bytes_are_untouched():
    body = multipart("name=\"file\"; filename=\"a.srt\"; filename*=UTF-8''b.vtt", b"x")
    assert add_plain_filenames(body, BOUNDARY) is body
    weird = multipart("name=\"file\"; filename*=UTF-8''%22evil%5C%0D%0A.vtt", b"--not-the-boundary\r\n\r\nkeep")
    out = add_plain_filenames(weird, BOUNDARY)
    assert b'filename="evil.vtt"' in out and out.endswith(b"--not-the-boundary\r\n\r\nkeep\r\n--" + BOUNDARY.encode()
                                                           + b"--\r\n")
    assert extended_filename('form-data; name="file"') is None


def test_file_part_without_a_file_name_gets_a_plain_message(tokenizer):
    # `curl -F file=<talk.vtt` sends the file's text as a plain field, without any file name
    c, rec = serve(tokenizer)
    r = post(c, multipart('name="file"', VTT.encode()))
    assert r.status_code == 422, r.text
    body = r.json()
    assert "file" in body["message"] and "file name" in body["message"]
    assert not TYPE_NAME_RE.search(body["message"]) and not TYPE_NAME_RE.search(str(body["details"]))
    assert rec.prompts == []


def test_python_type_names_in_any_validation_message_become_words():
    assert plain_message("Value error, expected <class 'int'>, got <class 'NoneType'>") == \
        "expected an integer, got nothing"
    assert plain_message("Expected UploadFile, received: <class 'str'>") == NOT_A_FILE
    assert plain_message("Input should be a valid integer") == "Input should be a valid integer"


def test_sbv_upload_and_guessed_encoding_are_reported(tokenizer):
    c, rec = serve(tokenizer)
    sbv = "0:00:00.500,0:00:02.000\nÉclair time, it’s easy\n".encode("cp1252")
    r = c.post("/v1/predict/file", files={"file": ("studio.sbv", sbv)}, data={"num_comments": "1"})
    assert r.status_code == 200, r.text
    assert "Éclair time, it’s easy" in rec.prompts[0]
    assert len(r.json()["notes"]) == 1 and "cp1252" in r.json()["notes"][0]
    info = c.get("/v1/info").json()
    assert ".sbv" in info["limits"]["upload_suffixes"]
    page = c.get("/").text
    assert re.search(r'accept="[^"]*\.sbv', page)
    ok = c.post("/v1/predict/file", files={"file": ("t.vtt", VTT.encode())}, data={"num_comments": "1"})
    assert ok.json()["notes"] == []  # UTF-8: nothing assumed


def test_deeply_nested_json_upload_is_422_naming_the_file(tokenizer):
    c, rec = serve(tokenizer)
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    r = c.post("/v1/predict/file", files={"file": ("deep.json", deep)}, data={"num_comments": "1"})
    assert r.status_code == 422, r.text
    assert "deep.json" in r.json()["message"] and "nested too deeply" in r.json()["message"]
    assert rec.prompts == []


@pytest.mark.parametrize("transcript", ["\x00\x00\x00", "\u200b\u200b", "\ufeff \u200b\x00", "   "])
def test_transcript_of_only_invisible_characters_is_422_like_whitespace(tokenizer, transcript):
    c, rec = serve(tokenizer)
    r = c.post("/v1/predict", json={"title": "t", "transcript": transcript, "num_comments": 1})
    assert r.status_code == 422, r.text
    assert "transcript" in r.json()["message"] and "empty" in r.json()["message"]
    assert rec.prompts == []
