"""A scripted OpenAI-compatible chat-completions server on loopback, for fault injection.

Each request's behaviour is chosen by a marker in its messages, ``[[fault:MODE]]`` (put it in a
pair's prompt), so concurrent calls stay independent. A mode ending in ``_once`` misbehaves on
the first request of a call (same model and messages) and answers normally afterwards.

Modes: ``ok`` (default), ``rate_limit_once`` (429 + Retry-After), ``server_error`` /
``server_error_once`` (500), ``hang`` / ``hang_once`` (no answer before ``hang_s``),
``malformed`` / ``malformed_once`` (reply text that is not JSON), ``fenced`` (JSON in a code
fence with prose), ``synonym`` (category "Harmlessness"), ``out_of_range`` (magnitude 1.7),
``non_numeric`` (magnitude "high"), ``content_filter`` (finish_reason content_filter),
``content_filter_400`` (HTTP 400, code content_filter), ``bad_body`` (HTTP 200, HTML body),
``bad_request`` (HTTP 400), ``auth`` (HTTP 401), ``echo_key`` (HTTP 502 whose body echoes the
Authorization header).

With ``api_key`` set, any request without ``Authorization: Bearer <api_key>`` gets HTTP 401.
``latency_s`` delays every answer (the benchmark's fixed-latency server). Loopback only.

``responder`` (optional) replaces the normal answer: a function of the request body returning
``(content, top_logprobs)``; ``top_logprobs`` (a list of ``{"token", "logprob"}``, or None) is
sent as the first token's ``logprobs`` in OpenAI's layout when the request has ``logprobs: true``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_MARKER = re.compile(r"\[\[fault:([a-z0-9_]+)\]\]")

GOOD = {"semantic_gap_category": "Factuality", "semantic_gap_magnitude": 0.8, "semantic_gap_confidence": 0.7}


class FaultServer:
    """Run with ``with FaultServer() as server:``; ``server.base_url`` ends in ``/v1``.

    Attributes:
        requests: every request received, as ``{"call", "mode", "model", "body", "auth"}``
            (``auth`` is True when the Authorization header was present).
        counts: requests per call id (sha256 of model and messages).
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        api_key: str | None = None,
        hang_s: float = 3.0,
        retry_after: str = "1",
        reply: dict[str, Any] | None = None,
        responder: Callable[[dict[str, Any]], tuple[str | None, list[dict[str, Any]] | None]]
        | None = None,
        port: int = 0,
    ) -> None:
        self.port = port
        self.latency_s = latency_s
        self.api_key = api_key
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.reply = reply or GOOD
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> FaultServer:
        handler = _make_handler(self)
        self._httpd = _Server(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    # ---------------------------------------------------------------- behaviour

    def handle(self, headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes, float]:
        """``(status, headers, body bytes, delay_s)`` for one request."""
        messages = body.get("messages") or []
        text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        call = hashlib.sha256(json.dumps([body.get("model"), messages], sort_keys=True).encode()).hexdigest()
        found = _MARKER.search(text)
        mode = found.group(1) if found else "ok"
        auth_header = headers.get("Authorization")
        with self._lock:
            self.counts[call] += 1
            nth = self.counts[call]
            self.requests.append({"call": call, "mode": mode, "model": body.get("model"), "body": body,
                                  "auth": auth_header is not None, "t": time.monotonic()})
        delay = self.latency_s
        if self.api_key is not None and auth_header != f"Bearer {self.api_key}":
            return _error(401, "invalid_api_key", "Incorrect API key provided."), delay
        if mode.endswith("_once"):
            mode = mode[: -len("_once")] if nth == 1 else "ok"
        if mode == "rate_limit":
            status, hdrs, data = _error(429, "rate_limit_exceeded", "Rate limit reached; slow down.")
            return (status, {**hdrs, "Retry-After": self.retry_after}, data), delay
        if mode == "server_error":
            return _error(500, "server_error", "The server had an error."), delay
        if mode == "hang":
            return self._chat(json.dumps(self.reply)), self.hang_s
        if mode == "malformed":
            return self._chat('semantic gap: large {"semantic_gap_category": Factuality,'), delay
        if mode == "fenced":
            return self._chat("Here you go:\n```json\n" + json.dumps(self.reply) + "\n```\nDone."), delay
        if mode == "synonym":
            return self._chat(json.dumps({**self.reply, "semantic_gap_category": "Harmlessness"})), delay
        if mode == "out_of_range":
            return self._chat(json.dumps({**self.reply, "semantic_gap_magnitude": 1.7})), delay
        if mode == "non_numeric":
            return self._chat(json.dumps({**self.reply, "semantic_gap_magnitude": "high"})), delay
        if mode == "content_filter":
            return self._chat(None, finish_reason="content_filter"), delay
        if mode == "content_filter_400":
            return _error(400, "content_filter", "The response was filtered by the content policy."), delay
        if mode == "bad_body":
            return (200, {"Content-Type": "text/html"}, b"<html>upstream proxy error</html>"), delay
        if mode == "bad_request":
            return _error(400, "invalid_request_error", "Unsupported parameter."), delay
        if mode == "auth":
            return _error(401, "invalid_api_key", "Incorrect API key provided."), delay
        if mode == "echo_key":  # a careless upstream that echoes the credentials it received
            return _error(502, "bad_gateway", f"upstream rejected header {auth_header}"), delay
        if self.responder is not None:
            content, top = self.responder(body)
            return self._chat(content, top_logprobs=top if body.get("logprobs") else None), delay
        return self._chat(json.dumps(self.reply)), delay

    def _chat(
        self,
        content: str | None,
        finish_reason: str = "stop",
        top_logprobs: list[dict[str, Any]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        payload = {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "fault-model-2025-01-01",
            "system_fingerprint": "fp_fault",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }
        if top_logprobs is not None:
            first = top_logprobs[0] if top_logprobs else {"token": content or "", "logprob": 0.0}
            payload["choices"][0]["logprobs"] = {
                "content": [{**first, "bytes": None, "top_logprobs": top_logprobs}]
            }
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early when the server shuts down."""
        self._closing.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 32+ concurrent clients connect at once in the benchmark


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": message, "type": "error", "code": code}}
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _make_handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are separate writes: without this, Nagle + delayed ACK add ~40 ms.
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"Content-Type": "application/json"}, b'{"error": "not found"}')
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, {"Content-Type": "application/json"}, b'{"error": "bad json"}')
                return
            (status, headers, data), delay = server.handle(self.headers, body)
            if delay:
                server.wait(delay)
            self._send(status, headers, data)

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (timeout) and closed the connection

    return Handler


# ------------------------------------------------------------------------------------ fixtures


def pairs_frame(modes: list[str], prefix: str = "p"):
    """A pairs table with one pair per mode; the prompt carries the mode's marker."""
    import pandas as pd

    rows = [
        {
            "prompt_id": f"{prefix}{i:03d}-{mode}",
            "prompt": f"Question {i}: what is {i} + {i}? [[fault:{mode}]]",
            "chosen": f"{2 * i}.",
            "rejected": f"{2 * i + 1}, probably.",
        }
        for i, mode in enumerate(modes)
    ]
    return pd.DataFrame(rows)


def varied_reply(body: dict[str, Any]) -> tuple[str, None]:
    """A ``responder`` whose valid label differs per call (category, magnitude and confidence
    drawn from the sha256 of the messages), so aggregation settings change the beta schedule."""
    digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
    categories = ["Safety", "Factuality", "Instruction", "Reasoning", "Helpfulness", "Style"]
    return json.dumps({
        "semantic_gap_category": categories[digest[0] % 6],
        "semantic_gap_magnitude": round(digest[1] / 255, 2),
        "semantic_gap_confidence": round(digest[2] / 255, 2),
    }), None


def teacher(server: FaultServer, id: str = "fault", **overrides: Any) -> dict[str, Any]:
    """A teacher entry (params YAML) pointing at ``server``."""
    return {"id": id, "backend": "openai", "preset": "generic", "model": f"{id}-model",
            "base_url": server.base_url, "max_concurrency": 8, **overrides}


def params(teachers: list[dict[str, Any]], *, variants: int = 3, **decoding: Any) -> dict[str, Any]:
    """A params mapping for ``sp2dpo annotate`` with fast retries and short timeouts."""
    from pathlib import Path

    names = ["v1_conservative_auditor.txt", "v2_learning_signal.txt", "v3_relative_comparator.txt"]
    root = Path(__file__).resolve().parents[1]
    return {
        "teachers": teachers,
        "prompts": {
            "dir": str(root / "prompts" / "annotate"),
            "variants": [{"name": f"v{k + 1}", "system": names[k]} for k in range(variants)],
        },
        "decoding": {"timeout_s": 5.0, "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                     **decoding},
        "annotate": {"progress": False, "max_pairs": None},
    }
