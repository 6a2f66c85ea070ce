"""Loopback stand-ins for every paid endpoint of the paper's run: teachers, the student server and
the judge, all speaking OpenAI's chat-completions protocol on 127.0.0.1.

What they are for. ``sp2dpo rehearse`` runs the whole pipeline at full size (hundreds of thousands
of teacher calls, tens of thousands of answers and judge calls) on one CPU machine. Every request
that would go to a provider goes to one of these servers instead, through the same client code
(:mod:`sp2dpo.llm.client`), so the rehearsal exercises the real retry loop, call stores, resume
logic and throughput, and costs nothing.

How they answer. Each server is described by a :class:`ServerSpec`; its ``kind`` says what it
pretends to be:

- ``teacher``: a JSON object with the three rubric keys of :mod:`sp2dpo.llm.parse`
  (``semantic_gap_category`` from the taxonomy, ``semantic_gap_magnitude`` and
  ``semantic_gap_confidence`` in [0, 1] with two decimals). Part of each value comes from the
  pair alone (the last user message, which every teacher and prompt variant shares), part from
  the whole request, so teachers and variants agree often but not always;
- ``student``: an answer of 30 to 400 words drawn from a fixed word list, cut at four characters
  per token of the request's ``max_tokens`` / ``max_completion_tokens`` (then ``finish_reason``
  is ``length``). The text is chosen without looking at the cap, so a smaller cap gives a
  prefix of the same answer, as greedy decoding would (this holds for every kind);
- ``judge``: one server for the three evaluation judges, told apart by the request:

  * a request for a single output token (``max_tokens`` or ``max_completion_tokens`` = 1) is
    AlpacaEval's label judge: the content is one of :data:`ALPACA_LABELS`, and when the request
    asks for ``logprobs`` the first token's ``top_logprobs`` come back in OpenAI's layout, so the
    preference is continuous;
  * otherwise a request whose messages contain :data:`MT_BENCH_MARKER` (FastChat's single-answer
    prompts ask for ``"[[rating]]"``) gets a short evaluation ending in ``Rating: [[N]]``,
    N from 1 to 10;
  * otherwise a request whose messages contain :data:`ARENA_HARD_MARKER` (our Arena-Hard prompt
    lists the five verdict labels) gets a short judgment ending in ``My final verdict is:
    [[LABEL]]`` with one of :data:`ARENA_HARD_VERDICTS`;
  * anything else is answered like the label judge.

Every reply is a pure function of the request: the text, the token counts and the whole response
body come from ``sha256(seed, request body)``, never from a clock or a counter. Two rehearsals
therefore write byte-identical outputs whatever the timing and however often a call was retried.

Faults, so the retry paths run too. Per request (by its hash, not by chance), a server answers the
*first* attempt with HTTP 429 and ``Retry-After`` (``rate_429``), with HTTP 500/502/503
(``rate_5xx``), or not at all for ``hang_s`` seconds (``rate_timeout``: a client whose timeout is
shorter than ``hang_s`` sees a timeout). The server remembers the requests it faulted and answers
their retries normally. A teacher also answers ``rate_invalid`` of the requests with text that
is not JSON, on every attempt: that request ends as ``invalid_json`` after the client's retries.
Latency is drawn per request from a log-normal distribution (median ``latency_median_s``, shape
``latency_sigma``, capped at 20 times the median); the handler thread sleeps it, so hundreds of
calls can be in flight at once.

How they run. :class:`Servers` starts ONE child process, ``python -m sp2dpo.rehearse.servers
--specs JSON``, which serves every spec on its own port of 127.0.0.1 (``ThreadingHTTPServer``,
HTTP/1.1 keep-alive, a thread per connection) and prints one JSON line ``{name: port}`` when it
listens. The child exits on SIGTERM or when its stdin closes, so it never outlives the process
that started it. ``GET /stats`` on a server returns its request counts (``counts()``,
``stats()``) and ``POST /stats/reset`` zeroes them (``reset_counts()``). Any API key is accepted.

This module imports only the standard library, :mod:`sp2dpo.core` and :mod:`sp2dpo.llm`: the
evaluation judges' label strings are repeated here as constants (the tests check them against the
evaluate modules' parsers).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from sp2dpo.core.schemas import CATEGORIES
from sp2dpo.llm.parse import KEYS

#: The kinds of server (:attr:`ServerSpec.kind`).
KINDS = ("teacher", "student", "judge")

#: AlpacaEval's two answer labels (``sp2dpo.evaluate.judges.pairwise.LABELS``).
ALPACA_LABELS: tuple[str, str] = ("A", "B")
#: What FastChat's MT-Bench single-answer prompts ask the judge to write.
MT_BENCH_MARKER = "[[rating]]"
#: A verdict label our Arena-Hard prompt lists (``prompts/judge/arena_hard/system.txt``).
ARENA_HARD_MARKER = "[[A>>B]]"
#: Arena-Hard's verdict labels (``sp2dpo.evaluate.benchmarks.arenahard.VERDICT_LABELS``), A much better first.
ARENA_HARD_VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
#: How often each verdict is drawn (strong verdicts rarer, as real judges give them).
_VERDICT_WEIGHTS = (0.1, 0.25, 0.3, 0.25, 0.1)

#: Characters per token of the token counts and the ``max_tokens`` cut.
CHARS_PER_TOKEN = 4
#: The latency cap, as a multiple of the median.
LATENCY_CAP = 20.0
#: Seconds the parent waits for the child to listen.
STARTUP_TIMEOUT_S = 60.0
#: The response's ``created`` field: a constant, so a body never depends on the clock.
CREATED = 1_735_689_600
#: Version of the reply rules: part of every hash, bump it when a rule changes.
RULES = "sp2dpo-rehearse-servers/1"

_WORDS = (
    "the answer model data result method value step case point idea reason example question "
    "first second also then because however therefore while which this that these those with "
    "without under over between within across after before during each every other more less "
    "clear simple careful useful small large short long early late common rare direct general "
    "specific explain describe compare consider note show give keep make take find use build "
    "check test measure improve reduce increase choose follow apply state define list"
).split()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """One loopback server.

    Attributes:
        name: its name (``teacher-qwen``, ``student``, ``judge``): the key of ``base_urls``.
        kind: ``teacher``, ``student`` or ``judge`` (module docstring).
        latency_median_s: median of the log-normal latency of an answer.
        latency_sigma: its shape (the standard deviation of the log); 0 gives a fixed latency.
        rate_429: share of requests whose first attempt gets HTTP 429 with ``Retry-After``.
        rate_5xx: share whose first attempt gets HTTP 500, 502 or 503.
        rate_timeout: share whose first attempt gets no answer for ``hang_s`` seconds.
        rate_invalid: teachers only: share of requests answered, every time, with text that is
            not JSON (ignored for the other kinds).
        hang_s: how long a timed-out attempt hangs; set the client's timeout below it.
        retry_after_s: the wait a 429 asks for (``retry-after-ms`` and ``Retry-After``).
        seed: seed of the replies and of which requests fault.
        port: the port to listen on; 0 picks a free one.
    """

    name: str
    kind: Literal["teacher", "student", "judge"]
    latency_median_s: float = 0.05
    latency_sigma: float = 0.7
    rate_429: float = 0.005
    rate_5xx: float = 0.003
    rate_timeout: float = 0.0005
    rate_invalid: float = 0.002
    hang_s: float = 6.0
    retry_after_s: float = 1.0
    seed: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"server name must be letters, digits, '.', '_', '-', got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"server {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.latency_median_s > 0 or self.latency_sigma < 0:
            raise ValueError(f"server {self.name!r}: latency_median_s must be > 0, latency_sigma >= 0")
        rates = (self.rate_429, self.rate_5xx, self.rate_timeout, self.rate_invalid)
        if not all(0.0 <= r <= 1.0 for r in rates) or sum(rates[:3]) > 1.0:
            raise ValueError(f"server {self.name!r}: each rate must be in [0, 1] and the three "
                             "transient rates must sum to at most 1")
        if self.hang_s < 0 or self.retry_after_s < 0 or not 0 <= self.port < 65536:
            raise ValueError(f"server {self.name!r}: hang_s, retry_after_s >= 0; port in [0, 65535]")


# ------------------------------------------------------------------------------ replies


@dataclasses.dataclass(frozen=True)
class Response:
    """One HTTP answer: status, extra headers, body, and the seconds to wait before sending it."""

    status: int
    body: bytes
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    outcome: str = "ok"


def request_digest(seed: int, body: Any) -> bytes:
    """The hash every reply and fault of a request derives from: sha256 of the rule version, the
    server's seed and the request body (canonical JSON: sorted keys, no spaces)."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{RULES}\0{seed}\0{canonical}".encode()).digest()


def unit(digest: bytes, label: str) -> float:
    """A number in [0, 1) drawn from ``digest`` for the purpose ``label``."""
    return int.from_bytes(hashlib.sha256(digest + label.encode()).digest()[:8], "big") / 2.0**64


def _pick(u: float, options: Sequence[str], weights: Sequence[float] | None = None) -> str:
    if weights is None:
        return options[min(int(u * len(options)), len(options) - 1)]
    acc = 0.0
    for option, weight in zip(options, weights, strict=True):
        acc += weight
        if u < acc:
            return option
    return options[-1]


def latency_s(spec: ServerSpec, digest: bytes) -> float:
    """The log-normal latency of a request: median * exp(sigma * z), capped at 20x the median."""
    u1 = (int.from_bytes(hashlib.sha256(digest + b"lat1").digest()[:8], "big") + 1) / (2.0**64 + 1)
    u2 = unit(digest, "lat2")
    z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return min(spec.latency_median_s * math.exp(spec.latency_sigma * z),
               LATENCY_CAP * spec.latency_median_s)


def _texts(body: dict[str, Any]) -> list[str]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return out


#: The request fields of the output-token cap (OpenAI's newer name first).
CAP_FIELDS = ("max_completion_tokens", "max_tokens")


def max_tokens(body: dict[str, Any]) -> int | None:
    """The request's output-token cap (``max_completion_tokens``, else ``max_tokens``)."""
    for key in CAP_FIELDS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def judge_kind(body: dict[str, Any]) -> Literal["alpaca_eval", "mt_bench", "arena_hard"]:
    """Which evaluation judge a request is from (module docstring)."""
    if max_tokens(body) == 1:
        return "alpaca_eval"
    text = "\n".join(_texts(body))
    if MT_BENCH_MARKER in text:
        return "mt_bench"
    if ARENA_HARD_MARKER in text:
        return "arena_hard"
    return "alpaca_eval"


def words(digest: bytes, label: str, count: int) -> str:
    """``count`` words of the fixed list in sentences of 6 to 16 words, paragraphs of 4 sentences."""
    stream = hashlib.shake_256(digest + label.encode()).digest(3 * count + 8)
    sentences: list[str] = []
    current: list[str] = []
    length = 6 + stream[-1] % 11
    for i in range(count):
        current.append(_WORDS[int.from_bytes(stream[2 * i : 2 * i + 2], "big") % len(_WORDS)])
        if len(current) == length or i == count - 1:
            sentences.append(" ".join(current).capitalize() + ".")
            current = []
            length = 6 + stream[2 * count + i] % 11
    paragraphs = [" ".join(sentences[k : k + 4]) for k in range(0, len(sentences), 4)]
    return "\n\n".join(paragraphs)


def teacher_text(digest: bytes, body: dict[str, Any], seed: int) -> str:
    """A rubric judgement: the pair (last user message) sets a common value, the request varies it."""
    texts = [m.get("content") for m in body.get("messages") or [] if isinstance(m, dict)
             and m.get("role") == "user" and isinstance(m.get("content"), str)]
    pair = hashlib.sha256(f"{RULES}\0{seed}\0pair\0{texts[-1] if texts else ''}".encode()).digest()
    own = unit(digest, "agree") < 0.7
    category = _pick(unit(pair if own else digest, "category"), CATEGORIES)
    magnitude = 0.1 + 0.8 * unit(pair, "magnitude") + 0.3 * (unit(digest, "magnitude") - 0.5)
    confidence = 0.3 + 0.7 * unit(digest, "confidence")
    values = (category, round(min(1.0, max(0.0, magnitude)), 2), round(confidence, 2))
    return json.dumps(dict(zip(KEYS, values, strict=True)))


def invalid_text(digest: bytes) -> str:
    """A teacher reply that is not JSON (no object at all)."""
    category = _pick(unit(digest, "category"), CATEGORIES)
    return f"The winner is better; I would call the gap {category.lower()}, of moderate size."


def mt_bench_text(digest: bytes) -> str:
    rating = 1 + min(int(unit(digest, "rating") * 10), 9)
    return f"{words(digest, 'mt', 20 + int(unit(digest, 'mtlen') * 40))}\n\nRating: [[{rating}]]"


def arena_hard_text(digest: bytes) -> str:
    verdict = _pick(unit(digest, "verdict"), ARENA_HARD_VERDICTS, _VERDICT_WEIGHTS)
    body = words(digest, "arena", 40 + int(unit(digest, "arenalen") * 80))
    return f"{body}\n\nMy final verdict is: [[{verdict}]]"


def label_logprobs(digest: bytes, top: int) -> tuple[str, list[dict[str, Any]]]:
    """The label judge's answer and its first token's ``top_logprobs`` (``top`` entries)."""
    p_first = 0.02 + 0.96 * unit(digest, "label")
    rest = 0.03
    probs = {ALPACA_LABELS[0]: p_first * (1 - rest), ALPACA_LABELS[1]: (1 - p_first) * (1 - rest),
             " " + ALPACA_LABELS[0]: rest * 0.5, "The": rest * 0.3, "**": rest * 0.2}
    ranked = sorted(probs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    entries = [{"token": t, "logprob": round(math.log(p), 8), "bytes": list(t.encode())}
               for t, p in ranked]
    label = ALPACA_LABELS[0] if p_first >= 0.5 else ALPACA_LABELS[1]
    return label, entries


def cap(text: str, limit: int | None) -> tuple[str, str]:
    """``text`` cut to ``limit`` tokens (4 characters each) and the finish reason."""
    if limit is not None and len(text) > limit * CHARS_PER_TOKEN:
        return text[: limit * CHARS_PER_TOKEN], "length"
    return text, "stop"


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def completion(digest: bytes, body: dict[str, Any], content: str, finish: str,
               logprobs: dict[str, Any] | None = None) -> bytes:
    """A chat-completions body in OpenAI's layout; nothing in it depends on time."""
    prompt_tokens = _tokens("".join(_texts(body)))
    completion_tokens = 1 if logprobs is not None else _tokens(content)
    model = body.get("model") if isinstance(body.get("model"), str) else "rehearsal"
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": logprobs,
              "finish_reason": finish}
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    payload = {"id": f"chatcmpl-{digest.hex()[:24]}", "object": "chat.completion", "created": CREATED,
               "model": model, "system_fingerprint": "fp_rehearsal", "choices": [choice], "usage": usage}
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "rehearsal", "code": code}}).encode()


def reply(spec: ServerSpec, digest: bytes, body: dict[str, Any]) -> Response:
    """The normal (or, for a teacher, permanently invalid) answer to a request.

    The text comes from the request without its token cap, then is cut to the cap: a smaller cap
    gives a prefix of the same answer, as greedy decoding would."""
    delay = latency_s(spec, digest)
    text_digest = request_digest(spec.seed, {k: v for k, v in body.items() if k not in CAP_FIELDS})
    if spec.kind == "teacher":
        if unit(text_digest, "invalid") < spec.rate_invalid:
            return Response(200, completion(digest, body, invalid_text(text_digest), "stop"), delay,
                            outcome="invalid")
        content, finish = cap(teacher_text(text_digest, body, spec.seed), max_tokens(body))
        return Response(200, completion(digest, body, content, finish), delay)
    if spec.kind == "student":
        text = words(text_digest, "student", 30 + int(unit(text_digest, "length") * 371))
        content, finish = cap(text, max_tokens(body))
        return Response(200, completion(digest, body, content, finish), delay)
    kind = judge_kind(body)
    if kind == "mt_bench":
        content, finish = cap(mt_bench_text(text_digest), max_tokens(body))
    elif kind == "arena_hard":
        content, finish = cap(arena_hard_text(text_digest), max_tokens(body))
    else:
        top = body.get("top_logprobs")
        top = top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else 5
        label, entries = label_logprobs(text_digest, top)
        logprobs = None
        if body.get("logprobs") is True:
            first = next((e for e in entries if e["token"] == label),
                         {"token": label, "logprob": 0.0, "bytes": list(label.encode())})
            logprobs = {"content": [{**first, "top_logprobs": entries}]}
        return Response(200, completion(digest, body, label, "stop", logprobs), delay, outcome=kind)
    return Response(200, completion(digest, body, content, finish), delay, outcome=kind)


class Behaviour:
    """The request handling of one server: faults, replies and counts (thread-safe)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.counts: Counter[str] = Counter()
        self._faulted: set[bytes] = set()
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"name": self.spec.name, "kind": self.spec.kind, "requests": self.counts["requests"],
                    "counts": dict(sorted(self.counts.items()))}

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def handle(self, raw: bytes) -> Response:
        """The answer to one chat-completions request body."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            with self._lock:
                self.counts["requests"] += 1
                self.counts["bad_request"] += 1
            return Response(400, error_body("invalid_request_error", "body must be a JSON object "
                                            "with a 'messages' list"), outcome="bad_request")
        if body.get("stream") is True:
            with self._lock:
                self.counts["requests"] += 1
                self.counts["bad_request"] += 1
            return Response(400, error_body("invalid_request_error", "stream is not supported"),
                            outcome="bad_request")
        spec = self.spec
        digest = request_digest(spec.seed, body)
        u = unit(digest, "fault")
        fault = None
        if u < spec.rate_429 + spec.rate_5xx + spec.rate_timeout:
            fault = "429" if u < spec.rate_429 else "5xx" if u < spec.rate_429 + spec.rate_5xx else "timeout"
        with self._lock:
            if fault is not None:
                if digest in self._faulted:
                    fault = None
                else:
                    self._faulted.add(digest)
        if fault == "429":
            wait = spec.retry_after_s
            headers = (("retry-after-ms", str(round(wait * 1000))), ("Retry-After", f"{wait:g}"))
            response = Response(429, error_body("rate_limit_exceeded", "Rate limit reached (rehearsal)."),
                                min(0.01, spec.latency_median_s), headers, "429")
        elif fault == "5xx":
            status = (500, 502, 503)[min(int(unit(digest, "status") * 3), 2)]
            response = Response(status, error_body("server_error", "The server had an error (rehearsal)."),
                                latency_s(spec, digest), outcome="5xx")
        else:
            response = reply(spec, digest, body)
            if fault == "timeout":
                response = dataclasses.replace(response, delay_s=spec.hang_s, outcome="timeout")
        with self._lock:
            self.counts["requests"] += 1
            self.counts[response.outcome] += 1
        return response


# ------------------------------------------------------------------------------ HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # hundreds of clients may connect at once


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _write(self, status: int, data: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
            lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                     "Content-Type: application/json", f"Content-Length: {len(data)}",
                     *(f"{k}: {v}" for k, v in headers)]
            if self.close_connection:
                lines.append("Connection: close")
            try:
                self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
            except OSError:  # a client past its timeout has hung up: nothing to tell it
                self.close_connection = True

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            raw = self._body()
            path = self.path.split("?", 1)[0].rstrip("/")
            if path.endswith("/chat/completions"):
                response = behaviour.handle(raw)
                if response.delay_s > 0:
                    time.sleep(response.delay_s)
                self._write(response.status, response.body, response.headers)
            elif path.endswith("/stats/reset"):
                behaviour.reset()
                self._write(200, json.dumps(behaviour.stats()).encode())
            else:
                self._write(404, error_body("not_found", f"no route {path}"))

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path.endswith("/stats"):
                self._write(200, json.dumps(behaviour.stats()).encode())
            elif path.endswith("/models"):
                data = {"object": "list", "data": [{"id": behaviour.spec.name, "object": "model"}]}
                self._write(200, json.dumps(data).encode())
            else:
                self._write(404, error_body("not_found", f"no route {path}"))

    return Handler


def serve(specs: Sequence[ServerSpec]) -> list[_Server]:
    """Start one server per spec on 127.0.0.1, each in a thread of its own."""
    servers = []
    for spec in specs:
        server = _Server(("127.0.0.1", spec.port), _handler(Behaviour(spec)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         name=f"serve-{spec.name}", daemon=True).start()
        servers.append(server)
    return servers


def check_specs(specs: Sequence[ServerSpec]) -> None:
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names):
        raise ValueError(f"server names must be given and unique, got {names}")
    ports = [s.port for s in specs if s.port]
    if len(set(ports)) != len(ports):
        raise ValueError(f"server ports must be unique, got {ports}")


def main(argv: Sequence[str] | None = None) -> int:
    """The child process: serve the specs, print ``{name: port}``, exit on SIGTERM or stdin EOF."""
    parser = argparse.ArgumentParser(prog="python -m sp2dpo.rehearse.servers", description=__doc__.split("\n")[0])
    parser.add_argument("--specs", required=True, help="JSON list of ServerSpec fields")
    parser.add_argument("--ignore-stdin", action="store_true",
                        help="do not exit when stdin closes (run by hand with stdin at /dev/null)")
    args = parser.parse_args(argv)
    specs = [ServerSpec(**item) for item in json.loads(args.specs)]
    check_specs(specs)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    servers = serve(specs)
    ports = {spec.name: server.server_address[1] for spec, server in zip(specs, servers, strict=True)}
    print(json.dumps(ports), flush=True)
    if not args.ignore_stdin:
        threading.Thread(target=_wait_for_eof, args=(stop,), name="stdin-watch", daemon=True).start()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


def _wait_for_eof(stop: threading.Event) -> None:
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


# ------------------------------------------------------------------------------ the parent side


class Servers:
    """Context manager: starts ONE child process that serves every spec on 127.0.0.1 (a port each)
    and stops it on exit (SIGTERM and stdin closed, then SIGKILL after ``stop_timeout_s``).

    Args:
        specs: the servers (unique names).
        startup_timeout_s: how long to wait for the child to listen.
        stop_timeout_s: how long to wait for it to exit before killing it.

    Attributes:
        base_urls: ``{name: "http://127.0.0.1:PORT/v1"}`` once started.
        ports: ``{name: PORT}`` once started.
    """

    def __init__(self, specs: list[ServerSpec], *, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 stop_timeout_s: float = 10.0) -> None:
        check_specs(specs)
        self.specs = list(specs)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.ports: dict[str, int] = {}
        self.base_urls: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Servers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child and wait until every server listens.

        Raises:
            RuntimeError: the child exited first, or did not listen within ``startup_timeout_s``.
        """
        cmd = [sys.executable, "-m", "sp2dpo.rehearse.servers",
               "--specs", json.dumps([dataclasses.asdict(s) for s in self.specs])]
        # Own session: a Ctrl-C reaches the parent only, which stops the servers last.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        try:
            line = self._first_line()
            self.ports = {name: int(port) for name, port in json.loads(line).items()}
        except BaseException:
            self.stop()
            raise
        self.base_urls = {name: f"http://127.0.0.1:{port}/v1" for name, port in self.ports.items()}

    def _first_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout_s
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"rehearsal servers did not start within {self.startup_timeout_s:g} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait(timeout=self.stop_timeout_s)
                raise RuntimeError(f"rehearsal servers exited with code {code} before listening "
                                   "(its error is on stderr above)")
            buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def stop(self) -> None:
        """Stop the child (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()

    def _call(self, name: str, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports[name]}{path}", method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per server: ``{"name", "kind", "requests", "counts"}``; ``counts`` splits the requests
        by outcome (``ok``, ``429``, ``5xx``, ``timeout``, ``invalid``, ``bad_request``, and for
        the judge ``alpaca_eval``, ``mt_bench``, ``arena_hard``)."""
        return {name: self._call(name, "/stats") for name in self.ports}

    def counts(self) -> dict[str, int]:
        """Requests received per server since the start (or the last :meth:`reset_counts`)."""
        return {name: int(s["requests"]) for name, s in self.stats().items()}

    def reset_counts(self) -> None:
        """Zero every server's counts (which requests already faulted is kept)."""
        for name in self.ports:
            self._call(name, "/stats/reset", "POST")


if __name__ == "__main__":
    sys.exit(main())
