"""A loopback OpenAI-compatible chat server that injects every failure mode a reflection call meets.

Each request plays one behaviour: the next from `script`, else the next of `cycle` (round robin),
else `default`. Every request served is logged as (behaviour, request body), so tests can compare the
client's fault counts against what was actually injected. Bounded: it listens on 127.0.0.1 only,
answers at most `max_requests` requests (then 503s without work), reads at most 4 MiB of request
body, and its slowest behaviour sleeps `hang_s` (set just above the client timeout).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# behaviour -> the fault reason the openai backend must report for it (None: a reply arrives)
TRANSPORT = {
    "timeout": "timeout",
    "drop": "connection",
    "429": "rate_limited",
    "429_retry_after": "rate_limited",
    "500": "http_500",
    "503": "http_503",
    "401": "http_401",
    "404": "http_404",
    "truncated_json": "bad_json",
    "html": "not_json",
    "not_completion": "not_completion",
    "no_choices": "not_completion",
    "content_not_str": "not_completion",
    "huge": "reply_too_long",
}
RETRIED = {k for k, v in TRANSPORT.items() if v not in ("http_401", "http_404", "reply_too_long")}
CONTENT = ("ok", "fresh", "empty", "null_content", "unfenced", "overlong", "identical", "length")
ALL = tuple(TRANSPORT) + CONTENT


def fenced(text: str) -> str:
    return f"Here is the improved instruction:\n```text\n{text}\n```\n"


def completion(content, finish="stop") -> dict:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


class FaultServer:
    """`/v1/chat/completions` on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        parent: str = "Solve the task.",
        good: str = "Solve the task. Check arithmetic twice.",
        hang_s: float = 1.0,
        max_requests: int = 2000,
        huge_chars: int = 300_000,
    ) -> None:
        self.script: list[str] = []
        self.cycle: itertools.cycle | None = None
        self.default = "ok"
        self.log: list[tuple[str, dict]] = []
        self.parent, self.good, self.hang_s = parent, good, hang_s
        self.max_requests, self.huge_chars = max_requests, huge_chars
        self.variant = itertools.count()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a handler thread forever

            def log_message(self, *args):
                pass

            def _raw(self, code, body: bytes, ctype="application/json", headers=()):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, code, payload, headers=()):
                self._raw(code, json.dumps(payload).encode(), headers=headers)

            def do_POST(self):
                n = min(int(self.headers.get("Content-Length", 0)), 4 << 20)
                req = json.loads(self.rfile.read(n) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                b = server.next_behaviour()
                with server._lock:
                    if len(server.log) >= server.max_requests:
                        return self._json(503, {"error": {"message": "fault server exhausted"}})
                    server.log.append((b, req))
                server.play(self, b, req)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict]:
        """The request bodies served so far, in order."""
        return [req for _, req in self.log]

    def served(self) -> dict[str, int]:
        """How many times each behaviour was played."""
        out: dict[str, int] = {}
        for b, _ in self.log:
            out[b] = out.get(b, 0) + 1
        return out

    def next_behaviour(self) -> str:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.cycle is not None:
                return next(self.cycle)
            return self.default

    def reset(self, script=(), cycle=None, default: str = "ok") -> None:
        with self._lock:
            self.script, self.default, self.log = list(script), default, []
            self.cycle = itertools.cycle(cycle) if cycle else None

    def play(self, h: BaseHTTPRequestHandler, b: str, req: dict | None = None) -> None:
        good = self.good
        if b == "fresh":  # a usable reply that differs every time (distinct accepted children)
            return h._json(200, completion(fenced(f"{good} (variant {next(self.variant)})")))
        if b == "timeout":
            time.sleep(self.hang_s)
            return h._json(200, completion(fenced(good)))
        if b == "drop":  # close the socket without a status line
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(2)
            return None
        if b == "429_retry_after":
            return h._json(429, {"error": {"message": "slow down"}}, headers=[("Retry-After", "0")])
        if b in ("429", "500", "503", "401", "404"):
            return h._json(int(b), {"error": {"message": f"injected {b}", "type": "x"}})
        if b == "truncated_json":
            body = json.dumps(completion(fenced(good))).encode()
            return h._raw(200, body[: len(body) // 2])
        if b == "html":
            return h._raw(200, b"<html><body>502 Bad Gateway</body></html>", ctype="text/html")
        if b == "not_completion":
            return h._json(200, {"object": "list", "data": []})
        if b == "no_choices":
            return h._json(200, {**completion(None), "choices": []})
        if b == "content_not_str":
            return h._json(200, completion(12345))
        if b == "huge":
            return h._json(200, completion(fenced("y" * self.huge_chars)))
        if b == "length":
            return h._json(200, completion(fenced("Solve the task. Chec"), finish="length"))
        content = (
            {
                "ok": fenced(good),
                "empty": "",
                "null_content": None,
                "unfenced": "You should check arithmetic twice.",
                "overlong": fenced("x" * 20000),
                "identical": fenced(self._current(req)),
            }[b]
            if not b.startswith("text:")
            else b[5:]
        )
        return h._json(200, completion(content))

    def _current(self, req: dict | None) -> str:
        """The context the request asks to improve (inside the meta-prompt's first fence)."""
        try:
            text = req["messages"][0]["content"]
            return text.split("```\n", 1)[1].split("\n```", 1)[0]
        except (TypeError, KeyError, IndexError):
            return self.parent

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
