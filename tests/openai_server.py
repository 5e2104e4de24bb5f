"""A small HTTP server speaking the OpenAI chat completions API, for tests and benchmarks.

Real HTTP on 127.0.0.1 (a free port), so the `openai` client runs unpatched:

    with OpenAIServer(prefer="longer", faults={"429": 0.1}) as srv:
        base_url = srv.base_url            # http://127.0.0.1:PORT/v1
        azure_endpoint = srv.url            # for AsyncAzureOpenAI(azure_endpoint=...)

Routes: ``POST /v1/chat/completions`` and the Azure form
``POST /openai/deployments/{deployment}/chat/completions?api-version=...``.

Verdicts are deterministic. The judge prompt shows two responses between the markers of
``sami_core.judge.prompt``; ``prefer`` picks the answer:
``"longer"`` (more characters wins; equal lengths give ``Final Response: Tie``),
``"shorter"``, ``"A"`` or ``"B"`` (a position-biased judge). A request that is no judge
prompt (e.g. the principle writer's) gets ``constitution_reply``.

Faults, chosen per prompt by a hash (so a test can compute exactly which prompts are
faulted): ``faults`` maps a kind to the fraction of prompts whose first
``fault_attempts`` requests fail that way; kinds: ``"429"`` (with ``Retry-After``),
``"500"``, ``"timeout"`` (the server sleeps ``hang_s`` before answering), ``"garbage"``
(an answer without a final choice). ``always_garbage`` is the fraction of prompts that are
always answered without a choice, ``always_error`` the fraction always answered 500
(checked only for prompts without a transient fault). ``drop_after=K`` makes the server drop every request
after K answered ones (the connection closes with no response: an endpoint gone down).
``latency_s`` is added to every answer. The server counts requests and records the
``Authorization`` / ``api-key`` headers, paths and timestamps per prompt.

Messages: as the real API, a request may carry a ``system`` message before the ``user``
one (any other role, or no user message, is a 400); the prompt that verdicts and faults
key on is the last user message, and ``systems`` records the system message sent with
each prompt. Every answer reports ``usage`` as the real API does, counted in
whitespace-separated words (:func:`usage_of`: prompt tokens over all messages, completion
tokens of the answer); ``usage=False`` leaves it out, as some local servers do.

Run alone (``python -m tests.openai_server --latency 0.1``), it prints ``port: N``;
``GET /stats`` returns the request counters and ``POST /reset`` clears them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GARBAGE = "Both summaries have merits and I cannot decide between them."
FAULT_KINDS = ("429", "500", "timeout", "garbage")

_A = re.compile(r"<response_a>\n(.*?)\n</response_a>", re.DOTALL)
_B = re.compile(r"<response_b>\n(.*?)\n</response_b>", re.DOTALL)


def prompt_fraction(prompt: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the prompt text: which prompts a fault hits."""
    h = hashlib.sha256((salt + "\0" + prompt).encode()).hexdigest()
    return int(h[:12], 16) / 16**12


def fault_for(prompt: str, faults: dict[str, float], always_garbage: float = 0.0,
              always_error: float = 0.0) -> str | None:
    """The fault kind a prompt gets (None: none). Fractions stack in FAULT_KINDS order."""
    x = prompt_fraction(prompt, "fault")
    lo = 0.0
    for kind in FAULT_KINDS:
        hi = lo + faults.get(kind, 0.0)
        if lo <= x < hi:
            return kind
        lo = hi
    if prompt_fraction(prompt, "garbage") < always_garbage:
        return "always_garbage"
    if prompt_fraction(prompt, "error") < always_error:
        return "always_error"
    return None


def usage_of(messages: list[dict], answer: str) -> dict[str, int]:
    """The ``usage`` the server reports: words of every message's content, words of the answer."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
    completion = len(answer.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def expected_choice(prompt: str, prefer: str) -> str | None:
    """What the server answers to a judge prompt: "A", "B", "Tie" (None: not a judge prompt)."""
    a, b = _A.search(prompt), _B.search(prompt)
    if not (a and b):
        return None
    if prefer in ("A", "B"):
        return prefer
    la, lb = len(a.group(1)), len(b.group(1))
    if la == lb:
        return "Tie"
    longer_a = la > lb
    return "A" if longer_a == (prefer == "longer") else "B"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        """``GET /stats``: the counters, for a server run in another process."""
        owner = self.server.owner
        if self.path != "/stats":
            return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        with owner._lock:
            self._send(200, {"requests": owner.requests, "answered": owner.answered})

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        if self.path == "/reset":
            owner.reset()
            return self._send(200, {"ok": True})
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        azure = re.fullmatch(r"/openai/deployments/([^/]+)/chat/completions", path)
        if path != "/v1/chat/completions" and not azure:
            return self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
        if owner._drop_now():
            self.close_connection = True
            self.connection.shutdown(2)
            return
        try:
            req = json.loads(body)
            messages = list(req["messages"])
            roles = [m["role"] for m in messages]
            prompt = str([m for m in messages if m["role"] == "user"][-1].get("content", ""))
        except (ValueError, KeyError, TypeError, IndexError):
            return self._send(400, {"error": {"message": "bad request body: messages need a user message",
                                              "type": "invalid_request_error"}})
        if set(roles) - {"system", "user", "assistant"}:
            return self._send(400, {"error": {"message": f"unknown role in {roles}", "type": "invalid_request_error"}})
        system = "\n".join(str(m.get("content", "")) for m in messages if m["role"] == "system")
        attempt = owner._record(self, prompt, azure.group(1) if azure else None, system)
        if owner.expected_key is not None:
            got = self.headers.get("api-key") or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if got != owner.expected_key:
                return self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
        fault = fault_for(prompt, owner.faults, owner.always_garbage, owner.always_error)
        if fault in ("429", "500", "timeout", "garbage") and attempt > owner.fault_attempts:
            fault = None
        if owner.latency_s:
            time.sleep(owner.latency_s)
        if fault == "429":
            return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                              {"Retry-After": str(owner.retry_after)})
        if fault in ("500", "always_error"):
            return self._send(500, {"error": {"message": "server error", "type": "server_error"}})
        if fault == "timeout":
            time.sleep(owner.hang_s)
        choice = expected_choice(prompt, owner.prefer)
        if choice is None:
            text = owner.constitution_reply
        elif fault in ("garbage", "always_garbage"):
            text = GARBAGE
        else:
            text = f"Comparison: Summary {choice} follows the principles better.\nFinal Response: {choice}"
        model = azure.group(1) if azure else req.get("model", "")
        answer = {
            "id": f"chatcmpl-{owner.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        if owner.usage:
            answer["usage"] = usage_of(messages, text)
        self._send(200, answer)

    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default backlog (5) drops bursts of concurrent connections
    owner: "OpenAIServer"


class OpenAIServer:
    """Start with ``start()`` (or ``with``); attributes may be changed while it runs."""

    def __init__(self, *, prefer: str = "longer", faults: dict[str, float] | None = None,
                 fault_attempts: int = 1, always_garbage: float = 0.0, always_error: float = 0.0,
                 retry_after: float = 0.2,
                 hang_s: float = 2.0, latency_s: float = 0.0, drop_after: int | None = None,
                 expected_key: str | None = None, constitution_reply: str = "", port: int = 0,
                 usage: bool = True):
        unknown = set(faults or {}) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.prefer = prefer
        self.faults = dict(faults or {})
        self.fault_attempts = fault_attempts
        self.always_garbage = always_garbage
        self.always_error = always_error
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.latency_s = latency_s
        self.drop_after = drop_after
        self.expected_key = expected_key
        self.usage = usage
        self.constitution_reply = constitution_reply or json.dumps([
            {"principle": "Summaries should be concise.", "antithesis": "Summaries should be long-winded."},
            {"principle": "Summaries should be accurate.", "antithesis": "Summaries should misstate the post."},
        ])
        self._port = port
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> "OpenAIServer":
        self._httpd = _Server(("127.0.0.1", self._port), _Handler)
        self._httpd.owner = self
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    # ---- records --------------------------------------------------------------------------
    def reset(self) -> None:
        """Clear counters and records (not the configuration)."""
        with self._lock:
            self.requests = 0  # every chat request received (dropped ones included)
            self.answered = 0  # requests that got past the drop check
            self.auth_headers: list[str] = []
            self.paths: list[str] = []
            self.deployments: list[str] = []
            self.attempts: dict[str, list[float]] = {}  # prompt -> request times (monotonic)
            self.systems: dict[str, str] = {}  # prompt -> the system message sent with it ('' = none)

    def _drop_now(self) -> bool:
        with self._lock:
            self.requests += 1
            if self.drop_after is not None and self.answered >= self.drop_after:
                return True
            self.answered += 1
            return False

    def _record(self, handler: _Handler, prompt: str, deployment: str | None, system: str = "") -> int:
        with self._lock:
            self.systems[prompt] = system
            self.auth_headers.append(handler.headers.get("Authorization") or handler.headers.get("api-key") or "")
            self.paths.append(handler.path)
            if deployment is not None:
                self.deployments.append(deployment)
            times = self.attempts.setdefault(prompt, [])
            times.append(time.monotonic())
            return len(times)


def main(argv: list[str] | None = None) -> None:
    """Serve in this process until killed; prints ``port: N`` once listening."""
    import argparse

    ap = argparse.ArgumentParser(description="an OpenAI chat completions API for tests and benchmarks")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    ap.add_argument("--prefer", default="longer", choices=["longer", "shorter", "A", "B"])
    args = ap.parse_args(argv)
    srv = OpenAIServer(prefer=args.prefer, latency_s=args.latency, port=args.port).start()
    print(f"port: {srv.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
