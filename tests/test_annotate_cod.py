"""`sicog annotate cod` end to end against a real chat-completions server on 127.0.0.1.

The server decodes the image of each request and describes its colour, size and MIME type, so the
outputs prove which image reached which record. Per colour it can answer 429, 500, 401, an
unusable text, or too slowly, for as many requests as a test asks.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from ports import free_port

from sicog.annotate import cod_job
from sicog.annotate.cod import SYSTEM_PROMPT
from sicog.cli import main
from sicog.data.jsonl import RecordError, load_records, write_jsonl
from sicog.data.prompts import COD_STEPS
from sicog.data.steps import format_steps

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-31415"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0)}


def expected_bodies(colour: str, width: int, height: int, mime: str) -> list[str]:
    """What the fake server says about an image (the five step bodies)."""
    return [
        f"A plain {colour} picture.",
        f"It measures {width} by {height} pixels and arrived as {mime}.",
        "Nothing overlaps; the colour fills the frame.",
        f"The borders are {colour} as well.",
        f"A uniformly {colour} image of {width}x{height} pixels.",
    ]


def good_reply(colour: str, width: int, height: int, mime: str) -> str:
    # Decorated the way real models write (preamble, bold and heading markers) to exercise the lenient parser.
    b = expected_bodies(colour, width, height, mime)
    return (f"Here is the structured description.\n\n**Step 1: {COD_STEPS[0]}**\n{b[0]}\n\n"
            f"Step 2: {COD_STEPS[1]}\n{b[1]}\n\n### Step 3: {COD_STEPS[2]}\n{b[2]}\n\n"
            f"Step 4: {COD_STEPS[3]}\n{b[3]}\n\nStep 5: {COD_STEPS[4]}\n{b[4]}")


class FakeVLM:
    """A threaded HTTP server speaking POST /v1/chat/completions, scripted per image colour."""

    def __init__(self, delay: float = 0.0, slow_seconds: float = 3.0) -> None:
        self.delay, self.slow_seconds = delay, slow_seconds
        self.script: dict[str, list[str]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def count(self, colour: str) -> int:
        with self.lock:
            return sum(r["colour"] == colour for r in self.requests)

    def _next_action(self, info: dict) -> str:
        with self.lock:
            n = sum(r["colour"] == info["colour"] for r in self.requests)
            self.requests.append(info)
            actions = self.script.get(info["colour"], ["ok"])
            return actions[min(n, len(actions) - 1)]

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self.send(404, {"error": {"message": f"no route {self.path}"}})
                content = body["messages"][1]["content"]
                url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
                header, b64 = url.split(",", 1)
                image = Image.open(io.BytesIO(base64.b64decode(b64)))
                rgb = image.convert("RGB").getpixel((0, 0))
                info = {
                    # Nearest, not equal: JPEG shifts colours a little.
                    "colour": min(COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOURS[n], rgb))),
                    "size": image.size, "format": image.format, "mime": header[len("data:"):].split(";")[0],
                    "client": self.client_address[0], "auth": self.headers.get("Authorization"), "body": body,
                    "text": next(part["text"] for part in content if part["type"] == "text"),
                }
                action = fake._next_action(info)
                if fake.delay:
                    fake.stopping.wait(fake.delay)
                if action == "429":
                    return self.send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                                     {"Retry-After": "0"})
                if action == "no-credit":  # OpenAI's answer for an account out of credit
                    return self.send(429, {"error": {"message": "You exceeded your current quota",
                                                     "type": "insufficient_quota", "code": "insufficient_quota"}})
                if action == "401-once-green-is-asked":  # a refused key while another request is under way
                    deadline = time.monotonic() + 120
                    while not fake.count("green") and time.monotonic() < deadline:
                        fake.stopping.wait(0.01)
                    action = "401"
                if action in ("500", "401"):
                    return self.send(int(action), {"error": {"message": f"scripted {action}"}})
                if action in ("html", "echo-key"):
                    # echo-key: a page echoing the request's key across the 200th character, where the reason is cut
                    page = (b"<html>bad gateway</html>" if action == "html"
                            else b"<html>" + b"x" * 170 + str(info["auth"]).encode() + b"</html>")
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    return self.wfile.write(page)
                if action == "slow":
                    fake.stopping.wait(fake.slow_seconds)
                if action == "die":  # the server goes away with this request unanswered
                    threading.Thread(target=fake.stop, daemon=True).start()
                    action = "drop"
                if action == "drop":  # the request read, the connection closed without a reply
                    self.close_connection = True
                    return self.connection.shutdown(socket.SHUT_RDWR)
                if action == "not-utf8":
                    page = b'{"choices": "\xff"}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    return self.wfile.write(page)
                message = {"role": "assistant"}
                finish = "stop"
                if action == "malformed":
                    text = f"I cannot describe this image. (debug: {info['auth']})"
                elif action == "half-character":  # an emoji cut between tokens: JSON escapes its first half
                    text = good_reply(info["colour"], *image.size, info["mime"]).replace("A plain", "\ud83d A plain")
                elif action == "placeholder":
                    text = good_reply(info["colour"], *image.size, info["mime"]).replace("A plain", "An <image> of a")
                else:
                    text = good_reply(info["colour"], *image.size, info["mime"])
                message["content"] = text
                if action == "parts":  # content parts, as some OpenAI-compatible servers send them
                    message["content"] = [{"type": "text", "text": text[:40]}, {"type": "text", "text": text[40:]}]
                elif action == "refusal":
                    message.update(content=None, refusal="I can't help with that.")
                elif action == "filtered":
                    message["content"], finish = "", "content_filter"
                elif action == "string-message":
                    message = text
                return self.send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

        return Handler


@pytest.fixture
def loopback_only(monkeypatch):
    """Fail any connection this process opens to an address other than loopback."""
    original = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"connection attempted outside loopback: {address!r}")
        return original(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server(loopback_only):
    fake = FakeVLM()
    yield fake
    fake.stop()


def make_dataset(root: Path, specs: list[tuple[str, str, tuple[int, int], str]]) -> Path:
    """Images and LLaVA caption records; spec = (id, colour, size, "PNG"|"JPEG"|"BMP"); files all named .png."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for rid, colour, size, fmt in specs:
        Image.new("RGB", size, COLOURS[colour]).save(images / f"{rid}.png", format=fmt)
        records.append({"id": rid, "image": f"{rid}.png", "source": "vflan", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is shown in picture {rid}?"},
            {"from": "gpt", "value": f"Original caption of {rid}: something {colour}."}]})
    write_jsonl(root / "captions.jsonl", records)
    return root / "captions.jsonl"


def annotate(fake: FakeVLM, root: Path, *extra: str) -> int:
    return main(["annotate", "cod", "--input", str(root / "captions.jsonl"), "--image-folder", str(root / "images"),
                 "--cod-dir", str(root / "cod"), "--dd-dir", str(root / "dd"), "--base-url", fake.url,
                 "--model", "test-vlm", "--timeout", "1", "--backoff", "0.01", "--max-backoff", "0.05",
                 "--max-retries", "2", "--parse-retries", "1", "--concurrency", "3", "--no-progress", *extra])


def ids_of(path: Path) -> list[str]:
    return [r["id"] for r in load_records(path)] if path.exists() else []


def all_text_under(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and p.suffix != ".png")


def test_every_record_is_annotated_from_its_own_image(server, tmp_path, capsys, caplog):
    make_dataset(tmp_path, [("r1", "red", (40, 30), "PNG"), ("b2", "blue", (64, 48), "JPEG"),
                            ("g3", "green", (20, 20), "BMP")])
    assert annotate(server, tmp_path) == 0

    cod = {r["id"]: r for r in load_records(tmp_path / "cod" / "cod.jsonl")}
    dd = {r["id"]: r for r in load_records(tmp_path / "dd" / "detailed_description.jsonl")}
    assert sorted(cod) == sorted(dd) == ["b2", "g3", "r1"]
    # JPEG bytes under a .png name are sent as JPEG; BMP, which the API does not take, as PNG.
    for rid, colour, size, mime in (("r1", "red", (40, 30), "image/png"), ("b2", "blue", (64, 48), "image/jpeg"),
                                    ("g3", "green", (20, 20), "image/png")):
        bodies = expected_bodies(colour, *size, mime)
        assert cod[rid]["conversations"] == [
            {"from": "human", "value": f"<image>\nWhat is shown in picture {rid}? Describe the image step by step."},
            {"from": "gpt", "value": format_steps(COD_STEPS, bodies)}]
        assert dd[rid]["conversations"] == [
            {"from": "human", "value": f"<image>\nWhat is shown in picture {rid}?"},
            {"from": "gpt", "value": bodies[4]}]
        assert cod[rid]["source"] == dd[rid]["source"] == "vflan" and cod[rid]["image"] == f"{rid}.png"
        assert cod[rid]["annotation"]["model"] == "test-vlm"
    assert not ids_of(tmp_path / "cod" / "failures.jsonl")

    assert len(server.requests) == 3
    for request in server.requests:
        body = request["body"]
        assert request["client"] == "127.0.0.1" and request["auth"] == f"Bearer {SECRET}"
        assert body["model"] == "test-vlm" and body["temperature"] == 0.2
        assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    texts = sorted(r["text"] for r in server.requests)
    assert "What is shown in picture b2?" in texts[0] and "Original caption of b2: something blue." in texts[0]
    logs = capsys.readouterr()
    assert "3 annotated, 0 failed" in logs.err
    assert SECRET not in logs.out + logs.err + caplog.text + all_text_under(tmp_path)



def test_a_caption_field_is_sent_as_the_original_description(server, tmp_path):
    # The published script's input: the question in the first human turn, the caption in 'caption'.
    make_dataset(tmp_path, [("r1", "red", (8, 8), "PNG"), ("g2", "green", (8, 8), "PNG")])
    records = load_records(tmp_path / "captions.jsonl")
    records[0]["caption"] = "A red square (the original caption)."
    records[1]["caption"] = "A green square (the original caption)."
    records[1]["conversations"] = records[1]["conversations"][:1]
    write_jsonl(tmp_path / "captions.jsonl", records)
    assert annotate(server, tmp_path) == 0
    assert sorted(ids_of(tmp_path / "cod" / "cod.jsonl")) == ["g2", "r1"]
    assert sorted(r["text"] for r in server.requests) == [
        f"Question: <image>\nWhat is shown in picture {rid}?\n\nOriginal description: {record['caption']}"
        for rid, record in sorted((r["id"], r) for r in records)]

def test_rate_limits_and_server_errors_are_retried(server, tmp_path, caplog):
    make_dataset(tmp_path, [("r1", "red", (16, 16), "PNG"), ("b2", "blue", (16, 16), "PNG")])
    server.script = {"red": ["429", "ok"], "blue": ["500", "500", "ok"]}
    assert annotate(server, tmp_path) == 0
    assert sorted(ids_of(tmp_path / "cod" / "cod.jsonl")) == ["b2", "r1"]
    assert server.count("red") == 2 and server.count("blue") == 3
    assert "HTTP 429" in caplog.text and "HTTP 500" in caplog.text


def test_failures_are_recorded_with_reason_and_never_written_as_data(server, tmp_path, capsys, caplog):
    root = tmp_path
    make_dataset(root, [("ok", "yellow", (16, 16), "PNG"), ("bad-text", "red", (16, 16), "PNG"),
                        ("down", "blue", (16, 16), "PNG"), ("slow", "green", (16, 16), "PNG"),
                        ("proxy", "magenta", (16, 16), "PNG")])
    records = load_records(root / "captions.jsonl")
    records.append({"id": "no-image", "image": "missing.png", "conversations": records[0]["conversations"]})
    records.append({"id": "no-caption", "image": "ok.png", "conversations": records[0]["conversations"][:1]})
    write_jsonl(root / "captions.jsonl", records)
    server.script = {"red": ["malformed"], "blue": ["500"], "green": ["slow"], "magenta": ["html"]}

    assert annotate(server, root) == 0
    assert ids_of(root / "cod" / "cod.jsonl") == ["ok"] and ids_of(root / "dd" / "detailed_description.jsonl") == ["ok"]
    failures = {r["id"]: r for r in load_records(root / "cod" / "failures.jsonl")}
    assert sorted(failures) == ["bad-text", "down", "no-caption", "no-image", "proxy", "slow"]
    # An unusable reply is asked again (--parse-retries 1), then kept raw, with the key masked.
    assert "did not parse after 2 replies" in failures["bad-text"]["reason"]
    assert failures["bad-text"]["raw_reply"] == "I cannot describe this image. (debug: Bearer ***)"
    assert server.count("red") == 2
    assert "HTTP 500" in failures["down"]["reason"] and "gave up after 3 attempts" in failures["down"]["reason"]
    assert "timed out" in failures["slow"]["reason"] and server.count("blue") == server.count("green") == 3
    assert "not a chat completion: '<html>bad gateway</html>'" in failures["proxy"]["reason"]
    assert server.count("magenta") == 3
    assert "captions.jsonl:6 id='no-image' field 'image'" in failures["no-image"]["reason"]
    assert "captions.jsonl:7 id='no-caption' field 'conversations'" in failures["no-caption"]["reason"]
    assert failures["no-image"]["record"] == records[5]
    logs = capsys.readouterr()
    assert "1 annotated, 6 failed" in logs.err and "failures.jsonl" in logs.err
    assert SECRET not in logs.out + logs.err + caplog.text + all_text_under(root)


def test_odd_completions_fail_their_record_with_the_reason_and_the_run_goes_on(server, tmp_path, caplog):
    """Content parts are read; a refusal, a content-filter stop, a message that is a string and a body that is not
    UTF-8 each fail their own record (they stopped the whole run with a traceback, on every rerun)."""
    specs = [("parts", "yellow"), ("refusal", "red"), ("filtered", "blue"), ("string-message", "green"),
             ("not-utf8", "magenta"), ("echo-key", "cyan")]
    make_dataset(tmp_path, [(name, colour, (16, 16), "PNG") for name, colour in specs])
    server.script = {colour: [name] for name, colour in specs}
    assert annotate(server, tmp_path) == 0
    assert ids_of(tmp_path / "cod" / "cod.jsonl") == ["parts"]
    failures = {r["id"]: r for r in load_records(tmp_path / "cod" / "failures.jsonl")}
    assert "the model refused: I can't help with that." in failures["refusal"]["reason"]
    assert failures["refusal"]["raw_reply"] == "I can't help with that."
    assert "finish_reason=content_filter" in failures["filtered"]["reason"]
    assert "not a chat completion" in failures["string-message"]["reason"]
    assert "unusable response" in failures["not-utf8"]["reason"]
    # The key is masked before the reason is cut to 200 characters: no part of it is kept.
    assert "not a chat completion" in failures["echo-key"]["reason"]
    assert SECRET[:12] not in all_text_under(tmp_path) + caplog.text


def test_a_reply_with_an_image_placeholder_is_asked_again_then_recorded_as_a_failure(server, tmp_path, capsys):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG"), ("c", "cyan", (8, 8), "PNG")])
    server.script = {"red": ["placeholder", "ok"], "blue": ["placeholder"]}
    assert annotate(server, tmp_path) == 0
    cod = load_records(tmp_path / "cod" / "cod.jsonl")
    assert sorted(r["id"] for r in cod) == ["a", "c"] and server.count("red") == 2
    assert all("<image>" not in r["conversations"][1]["value"] for r in cod)
    failures = {r["id"]: r for r in load_records(tmp_path / "cod" / "failures.jsonl")}
    assert list(failures) == ["b"] and server.count("blue") == 2
    assert "did not parse after 2 replies: <image> in step(s) 1" in failures["b"]["reason"]
    assert "An <image> of a blue picture." in failures["b"]["raw_reply"]
    assert "2 annotated, 1 failed" in capsys.readouterr().err


def test_an_invalid_training_record_fails_its_record_not_the_run(server, tmp_path, monkeypatch):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    real_cod_record = cod_job.cod_record

    def cod_record(record, source, caption, model):
        if record["id"] == "b":
            raise RecordError("<image> in an assistant turn", record_id="b", field="conversations[1].value")
        return real_cod_record(record, source, caption, model)

    monkeypatch.setattr(cod_job, "cod_record", cod_record)
    assert annotate(server, tmp_path) == 0
    assert ids_of(tmp_path / "cod" / "cod.jsonl") == ["a"]
    failures = load_records(tmp_path / "cod" / "failures.jsonl")
    assert [r["id"] for r in failures] == ["b"] and failures[0]["requests"] == 1
    assert failures[0]["reason"].endswith("captions.jsonl:2 id='b': the annotated record is invalid (field "
                                          "'conversations[1].value' of the training record): <image> in an "
                                          "assistant turn")
    assert "A plain blue picture." in failures[0]["raw_reply"]


def test_a_reply_holding_half_a_character_fails_its_record_with_the_reply_kept(server, tmp_path):
    """No UTF-8 file can hold an unpaired surrogate: writing it stopped the run with a traceback."""
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    server.script = {"red": ["half-character"] * 10}
    assert annotate(server, tmp_path) == 0
    [failure] = load_records(tmp_path / "cod" / "failures.jsonl")
    assert failure["id"] == "a" and "the reply holds \\ud83d, half of a UTF-16 pair" in failure["reason"]
    assert failure["raw_reply"].startswith("Here is") and "\\ud83d A plain red picture." in failure["raw_reply"]
    assert ids_of(tmp_path / "cod" / "cod.jsonl") == ["b"] and server.count("red") == 2  # --parse-retries 1


def test_rerun_skips_done_and_failed_ids_until_asked_to_retry(server, tmp_path):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG"), ("c", "cyan", (8, 8), "PNG")])
    server.script = {"cyan": ["malformed"]}
    assert annotate(server, tmp_path, "--limit", "1") == 0
    assert ids_of(tmp_path / "cod" / "cod.jsonl") == ["a"] and len(server.requests) == 1
    assert annotate(server, tmp_path) == 0
    assert server.count("red") == 1 and server.count("blue") == 1 and server.count("cyan") == 2
    assert ids_of(tmp_path / "cod" / "failures.jsonl") == ["c"]

    server.script = {}
    assert annotate(server, tmp_path) == 0
    assert len(server.requests) == 4  # nothing was asked again
    assert annotate(server, tmp_path, "--retry-failures") == 0
    assert sorted(ids_of(tmp_path / "cod" / "cod.jsonl")) == ["a", "b", "c"]
    assert sorted(ids_of(tmp_path / "dd" / "detailed_description.jsonl")) == ["a", "b", "c"]
    assert ids_of(tmp_path / "cod" / "failures.jsonl") == []


def test_another_runs_descriptions_are_refused_not_added_to(server, tmp_path, capsys):
    """A new --cod-dir with the old --dd-dir added a second description of every id, from another model."""
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    assert annotate(server, tmp_path) == 0
    dd_path = tmp_path / "dd" / "detailed_description.jsonl"
    before, asked = dd_path.read_text(), len(server.requests)
    (tmp_path / "cod").rename(tmp_path / "cod-first")
    capsys.readouterr()
    assert annotate(server, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {dd_path}: holds descriptions of 2 id(s) without a line in "
                                                f"{tmp_path / 'cod' / 'cod.jsonl'} (first: 'a')"), err
    assert dd_path.read_text() == before and len(server.requests) == asked


def test_description_lost_by_a_kill_is_rebuilt_without_a_request(server, tmp_path, capsys):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    assert annotate(server, tmp_path) == 0
    assert "rebuilt" not in capsys.readouterr().err
    dd_path = tmp_path / "dd" / "detailed_description.jsonl"
    complete = {r["id"]: r for r in load_records(dd_path)}
    lines = dd_path.read_text().splitlines(keepends=True)
    dd_path.write_text(lines[0] + lines[1][:25])  # the last description cut mid-line
    assert annotate(server, tmp_path) == 0
    assert len(server.requests) == 2
    assert {r["id"]: r for r in load_records(dd_path)} == complete
    assert "  1 description(s) rebuilt from CoD lines an interrupted run wrote without them (no request)\n" in \
        capsys.readouterr().err


def test_a_refused_key_stops_the_run_without_recording_failures(server, tmp_path, capsys, caplog):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "red", (9, 9), "PNG")])
    server.script = {"red": ["401"]}
    assert annotate(server, tmp_path, "--concurrency", "1") == 1
    err = capsys.readouterr().err
    assert "refused the request: HTTP 401" in err and SECRET not in err + caplog.text
    assert ids_of(tmp_path / "cod" / "failures.jsonl") == [] and ids_of(tmp_path / "cod" / "cod.jsonl") == []


def test_an_account_out_of_credit_stops_the_run_without_recording_failures(server, tmp_path, capsys):
    """Its 429 was retried like a rate limit (about 24 s a record) and every record written as failed."""
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "red", (9, 9), "PNG")])
    server.script = {"red": ["no-credit"] * 10}
    assert annotate(server, tmp_path, "--concurrency", "1") == 1
    assert "refused the request: HTTP 429: Error code: 429 - You exceeded your current quota" in capsys.readouterr().err
    assert len(server.requests) == 1 and ids_of(tmp_path / "cod" / "failures.jsonl") == []


def test_a_server_that_never_answers_stops_the_run_naming_the_cause(loopback_only, tmp_path, capsys):
    """Every record was retried, then written as failed with "connection error: Connection error." alone."""
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["annotate", "cod", "--input", str(tmp_path / "captions.jsonl"), "--image-folder",
                 str(tmp_path / "images"), "--output-dir", str(tmp_path / "cod"), "--base-url", nobody,
                 "--max-retries", "1", "--backoff", "0.01", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{nobody} never answered: connection error: Connection error. (" in err and "refused" in err.lower()
    assert ids_of(tmp_path / "cod" / "failures.jsonl") == [] and ids_of(tmp_path / "cod" / "cod.jsonl") == []


def test_a_server_that_goes_away_mid_run_stops_the_run_recording_nothing_more(server, tmp_path, capsys):
    """Each later record was retried for its connection refused (about 23 s each), written as failed, and the run
    exited 0: hours for a large input, and only --retry-failures brought the records back."""
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG"), ("c", "green", (8, 8), "PNG")])
    server.script = {"blue": ["die"]}
    assert annotate(server, tmp_path, "--concurrency", "1") == 1
    assert f"{server.url} stopped answering: connection error: " in capsys.readouterr().err
    assert ids_of(tmp_path / "cod" / "cod.jsonl") == ["a"] and ids_of(tmp_path / "cod" / "failures.jsonl") == []


def test_a_first_record_that_times_out_fails_alone(loopback_only, tmp_path):
    """A timeout reaches a server: it is that record's failure, not a server that never answered."""
    fake = FakeVLM(slow_seconds=5)
    try:
        make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
        fake.script = {"red": ["slow"] * 10}
        assert annotate(fake, tmp_path, "--concurrency", "1") == 0  # --timeout 1
        assert ids_of(tmp_path / "cod" / "failures.jsonl") == ["a"] and ids_of(tmp_path / "cod" / "cod.jsonl") == ["b"]
    finally:
        fake.stop()


def test_a_first_record_whose_connection_drops_fails_alone(server, tmp_path):
    """A dropped connection was taken for no server at the address: the run stopped, on every rerun, at that record."""
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    server.script = {"red": ["drop"] * 10}
    assert annotate(server, tmp_path, "--concurrency", "1") == 0
    assert ids_of(tmp_path / "cod" / "failures.jsonl") == ["a"] and ids_of(tmp_path / "cod" / "cod.jsonl") == ["b"]
    assert server.count("red") == 3  # --max-retries 2


def test_an_address_that_speaks_no_http_stops_the_run(loopback_only, tmp_path, capsys):
    """A listener that drops every request (another service on the port) is no server: after three records whose
    requests were all dropped with nothing answered, the run stops instead of failing every record."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def banner() -> None:  # as an SSH server greets, then hangs up on what is no SSH
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=banner, daemon=True).start()
    try:
        make_dataset(tmp_path, [(name, colour, (8, 8), "PNG") for name, colour in zip("abcde", COLOURS)])
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        assert main(["annotate", "cod", "--input", str(tmp_path / "captions.jsonl"), "--image-folder",
                     str(tmp_path / "images"), "--output-dir", str(tmp_path / "cod"), "--base-url", url,
                     "--max-retries", "0", "--concurrency", "1", "--no-progress"]) == 1
        assert f"{url} never answered: connection error: " in capsys.readouterr().err
        assert len(ids_of(tmp_path / "cod" / "failures.jsonl")) == 2 and ids_of(tmp_path / "cod" / "cod.jsonl") == []
    finally:
        stop.set()
        listener.close()


def test_an_address_where_no_connection_opens_stops_the_run(loopback_only, tmp_path, capsys):
    """A connect timeout (a firewall dropping the connection) was taken for a slow reply: every record failed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = [socket.socket() for _ in range(8)]  # a full accept queue: further connections never open
    for sock in queued:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    try:
        make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
        nobody = f"http://127.0.0.1:{port}/v1"
        assert main(["annotate", "cod", "--input", str(tmp_path / "captions.jsonl"), "--image-folder",
                     str(tmp_path / "images"), "--output-dir", str(tmp_path / "cod"), "--base-url", nobody,
                     "--timeout", "0.5", "--max-retries", "1", "--backoff", "0.01", "--concurrency", "1",
                     "--no-progress"]) == 1
        assert f"{nobody} never answered: request timed out (gave up after 2 attempts)" in capsys.readouterr().err
        assert ids_of(tmp_path / "cod" / "failures.jsonl") == [] and ids_of(tmp_path / "cod" / "cod.jsonl") == []
    finally:
        for sock in (*queued, listener):
            sock.close()


def test_a_refused_key_stops_the_process_without_waiting_for_replies_under_way(loopback_only, tmp_path):
    """The interpreter used to wait at exit for the pool's thread still reading a reply (up to --timeout)."""
    fake = FakeVLM(slow_seconds=900)
    try:
        make_dataset(tmp_path, [("slow", "green", (8, 8), "PNG"), ("refused", "red", (8, 8), "PNG")])
        fake.script = {"green": ["slow"], "red": ["401-once-green-is-asked"]}
        command = [sys.executable, "-m", "sicog", "annotate", "cod", "--input", str(tmp_path / "captions.jsonl"),
                   "--image-folder", str(tmp_path / "images"), "--output-dir", str(tmp_path / "out"),
                   "--base-url", fake.url, "--concurrency", "2", "--timeout", "900", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": SECRET}
        # A liveness bound far below the reply's 900 s, not a speed: the process ends without that reply.
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and "refused the request: HTTP 401" in result.stderr
        assert fake.count("green") == 1 and ids_of(tmp_path / "out" / "failures.jsonl") == []
    finally:
        fake.stop()


def test_no_key_for_the_official_endpoint_is_a_usage_error(loopback_only, monkeypatch, tmp_path, capsys):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG")])
    monkeypatch.delenv("OPENAI_API_KEY")
    rc = main(["annotate", "cod", "--input", str(tmp_path / "captions.jsonl"), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("sicog annotate cod: error: set OPENAI_API_KEY")
    assert not (tmp_path / "o").exists()


def test_duplicate_ids_are_refused_before_any_request(server, tmp_path, capsys):
    path = make_dataset(tmp_path, [("a", "red", (8, 8), "PNG")])
    record = load_records(path)[0]
    write_jsonl(path, [record, record])
    assert annotate(server, tmp_path) == 2
    assert "captions.jsonl:2 id='a' field 'id': duplicate id (first on line 1)" in capsys.readouterr().err
    assert server.requests == []


def test_an_input_without_records_is_refused_writing_nothing(server, tmp_path, capsys):
    """It exited 0 with empty outputs: a truncated download found out only at training."""
    make_dataset(tmp_path, [])
    assert annotate(server, tmp_path) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'captions.jsonl'}: holds no records\n"
    assert not (tmp_path / "cod" / "cod.jsonl").exists() and server.requests == []


def test_a_second_run_on_the_same_outputs_is_refused_before_any_request(server, tmp_path, capsys):
    """Two runs appending to one CoD file annotated (and paid for) every record twice."""
    from sicog.annotate.cod_job import CodJob
    from sicog.data.lock import output_lock

    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG")])
    job = CodJob(input=tmp_path / "captions.jsonl", cod_dir=tmp_path / "cod", dd_dir=tmp_path / "dd")
    for held in (job.cod_path, job.dd_path):
        with output_lock(held):
            assert annotate(server, tmp_path) == 2
        assert f"sicog annotate cod: error: {held} is in use by another run (pid" in capsys.readouterr().err
    assert server.requests == []
    assert annotate(server, tmp_path) == 0 and ids_of(job.cod_path) == ["a"]


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_losses(loopback_only, tmp_path):
    fake = FakeVLM(delay=0.25)
    try:
        n = 16
        colours = list(COLOURS)
        make_dataset(tmp_path, [(f"id{i:02d}", colours[i % len(colours)], (10 + i, 12), "PNG") for i in range(n)])
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": SECRET}
        command = [sys.executable, "-m", "sicog", "annotate", "cod", "--input", str(tmp_path / "captions.jsonl"),
                   "--image-folder", str(tmp_path / "images"), "--output-dir", str(tmp_path / "out"),
                   "--base-url", fake.url, "--concurrency", "2", "--timeout", "5"]
        cod_path = tmp_path / "out" / "cod.jsonl"
        first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (cod_path.exists() and len(cod_path.read_bytes().splitlines()) >= 4):
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended before being killed"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        out, err = first.communicate()
        assert first.returncode == -signal.SIGKILL
        done_before_kill = len(ids_of(cod_path))
        assert 4 <= done_before_kill < n

        second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        expected = [f"id{i:02d}" for i in range(n)]
        for path in (cod_path, tmp_path / "out" / "detailed_description.jsonl"):
            got = ids_of(path)
            assert sorted(got) == expected, f"{path.name}: duplicates or losses"
        assert ids_of(tmp_path / "out" / "failures.jsonl") == []
        # Only the requests in flight at the kill are paid twice.
        assert n <= len(fake.requests) <= n + 2
        assert SECRET not in out.decode() + err.decode() + second.stdout + second.stderr + all_text_under(tmp_path)
    finally:
        fake.stop()


def test_revise_cod_script_runs_from_its_folder_against_a_local_server(loopback_only, tmp_path):
    fake = FakeVLM()
    try:
        make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (9, 9), "PNG")])
        env = {**os.environ, "PYTHONPATH": str(REPO), "SICOG_PYTHON": sys.executable, "OPENAI_API_KEY": SECRET,
               "OPENAI_BASE_URL": fake.url, "ANNOTATION_MODEL": "local-vlm",
               "ORIGINAL_CAPTION_FILE": str(tmp_path / "captions.jsonl"), "IMAGE_DIR": str(tmp_path / "images"),
               "OUTPUT_COD_DIR": str(tmp_path / "cod"), "OUTPUT_DD_DIR": str(tmp_path / "dd")}
        result = subprocess.run(["bash", "revise_cod.sh", "--no-progress"], cwd=REPO / "training_data_annotation",
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert sorted(ids_of(tmp_path / "cod" / "cod.jsonl")) == ["a", "b"]
        assert sorted(ids_of(tmp_path / "dd" / "detailed_description.jsonl")) == ["a", "b"]
        assert {r["body"]["model"] for r in fake.requests} == {"local-vlm"}
        assert SECRET not in result.stdout + result.stderr + all_text_under(tmp_path)
    finally:
        fake.stop()


@pytest.mark.parametrize(("name", "flags", "named"), [
    ("cod.jsonl", ["--output-dir", "{out}"], "--output-dir {out}"),
    ("detailed_description.jsonl", ["--cod-dir", "{out}/x", "--dd-dir", "{out}"], "--dd-dir {out}"),
    ("failures.jsonl", ["--cod-dir", "{out}/x/..", "--dd-dir", "{out}/x"], "--cod-dir {out}/x/.."),
], ids=["cod", "descriptions", "failures-spelled-otherwise"])
def test_an_input_that_is_an_output_file_is_refused_and_kept(server, tmp_path, capsys, name, flags, named):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG")])
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    source = out / name
    (tmp_path / "captions.jsonl").rename(source)
    before = source.read_bytes()
    rc = main(["annotate", "cod", "--input", str(source), "--image-folder", str(tmp_path / "images"),
               *[f.format(out=out) for f in flags], "--base-url", server.url, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    # Named by the option that gave the folder, the one to change.
    assert err.startswith(f"sicog annotate cod: error: {named.format(out=out)} writes ")
    assert f"/{name}, which is the same file as --input {source}; writing it would replace the input" in err
    assert source.read_bytes() == before and server.requests == []
    assert [p.name for p in out.rglob("*") if p.is_file()] == [name]


@pytest.mark.parametrize(("flags", "says"), [
    (["--output-dir", "afile"], "--output-dir afile is a file, not a folder"),
    (["--output-dir", "afile/x"], "--output-dir afile/x cannot be made a folder (afile is a file)"),
    (["--cod-dir", "ok", "--dd-dir", "afile"], "--dd-dir afile is a file, not a folder"),
    # Every record failed alone, and was kept failed once the folder was fixed, until --retry-failures.
    (["--output-dir", "ok", "--image-folder", "imgaes"], "--image-folder imgaes: not a folder"),
], ids=["file", "inside-a-file", "dd-dir-file", "image-folder-mistyped"])
def test_an_output_folder_that_is_a_file_is_one_line(server, tmp_path, monkeypatch, capsys, flags, says):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG")])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    rc = main(["annotate", "cod", "--input", "captions.jsonl", "--image-folder", "images", *flags,
               "--base-url", server.url, "--no-progress"])
    assert rc == 2 and capsys.readouterr().err == f"sicog annotate cod: error: {says}\n"
    assert (tmp_path / "afile").read_text() == "keep me" and not (tmp_path / "ok").exists()
    assert server.requests == []


def _cut_description(root: Path, change) -> Path:
    """After a full run: ``b``'s CoD line (line 2) changed by ``change`` and its description gone, as a resume
    would find them after a kill and an edit."""
    cod_path, dd_path = root / "cod" / "cod.jsonl", root / "dd" / "detailed_description.jsonl"
    cod = sorted(load_records(cod_path), key=lambda r: r["id"])
    change(cod[1])
    write_jsonl(cod_path, cod)
    write_jsonl(dd_path, [r for r in load_records(dd_path) if r["id"] == "a"])
    return cod_path


@pytest.mark.parametrize(("change", "says"), [
    (lambda r: r["conversations"][1].update(value="A plain blue picture, in prose."),
     "the CoD caption does not parse back (no 'Step N' markers in the reply)"),
    (lambda r: r.update(conversations=r["conversations"][:1]), "no CoD caption to rebuild the missing description"),
], ids=["prose", "no-caption"])
def test_a_cod_line_that_cannot_be_read_back_stops_the_resume_naming_it(server, tmp_path, capsys, change, says):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    assert annotate(server, tmp_path) == 0
    cod_path = _cut_description(tmp_path, change)
    before = cod_path.read_bytes()
    capsys.readouterr()
    assert annotate(server, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cod_path}:2 id='b' field 'conversations[1].value': {says}")
    assert err.count("\n") == 1 and err.endswith("fix or delete this line\n")
    assert cod_path.read_bytes() == before and len(server.requests) == 2
    assert ids_of(tmp_path / "dd" / "detailed_description.jsonl") == ["a"]


def test_a_description_is_rebuilt_from_a_cod_line_without_a_model_name(server, tmp_path):
    make_dataset(tmp_path, [("a", "red", (8, 8), "PNG"), ("b", "blue", (8, 8), "PNG")])
    assert annotate(server, tmp_path) == 0
    _cut_description(tmp_path, lambda r: r.update(annotation="hand-written"))
    assert annotate(server, tmp_path) == 0
    dd = {r["id"]: r for r in load_records(tmp_path / "dd" / "detailed_description.jsonl")}
    assert dd["b"]["annotation"] == {"kind": "detailed_description", "model": ""}
    assert dd["b"]["conversations"][1]["value"] == expected_bodies("blue", 8, 8, "image/png")[4]


@pytest.mark.parametrize(("flag", "value"), [("--max-backoff", "inf"), ("--timeout", "nan"), ("--backoff", "0"),
                                             ("--temperature", "nan"), ("--temperature", "-1")])
def test_a_number_out_of_its_range_stops_in_argparse(tmp_path, capsys, flag, value):
    """An infinite longest wait would make the first retry wait forever; a temperature of nan failed, with a
    traceback, to become a request's JSON."""
    with pytest.raises(SystemExit) as stop:
        main(["annotate", "cod", "--input", str(tmp_path / "in.jsonl"), "--output-dir", str(tmp_path), flag, value])
    assert stop.value.code == 2 and f"argument {flag}: " in capsys.readouterr().err
