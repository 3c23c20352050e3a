"""A small OpenAI-compatible HTTP server for tests: real HTTP on a free port, real embeddings.

``POST /v1/embeddings`` answers with all-MiniLM-L6-v2 vectors (computed by the numpy
encoder), so retrieval through the remote provider path is meaningful;
``POST /v1/chat/completions`` answers from the numbered passages in the prompt: the
first sentence of passage [1], cited. Every request is recorded; ``fail_next``
makes the next replies an HTTP error.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from symbi_context.minilm import MiniLM


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ProviderState:
    model: MiniLM
    dimension: int = 384
    requests: list[Recorded] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)

    def fail_next(self, status: int, times: int = 1) -> None:
        self.failures.extend([status] * times)


def _handler(state: ProviderState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            state.requests.append(Recorded(self.path, dict(self.headers.items()), body))
            if state.failures:
                self._send(state.failures.pop(0), {"error": {"message": "told to fail"}})
            elif self.path == "/v1/embeddings":
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                vectors = state.model.encode(inputs)
                rows = [list(map(float, v))[: state.dimension] for v in vectors]
                if state.dimension > vectors.shape[1]:
                    rows = [row + [0.0] * (state.dimension - len(row)) for row in rows]
                data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
                self._send(200, {"object": "list", "data": data[::-1], "model": body["model"]})  # any order
            elif self.path == "/v1/chat/completions":
                prompt = body["messages"][-1]["content"]
                first = re.search(r"^\[1\] \([^)]*\) (.+?[.!?])(\s|$)", prompt, re.M | re.S)
                text = f"{first.group(1)} [1]" if first else "The passages do not say."
                self._send(200, {"model": body["model"], "choices": [{"message": {"role": "assistant",
                                                                                  "content": text}}]})  # fmt: skip
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

    return Handler


@contextmanager
def openai_server(state: ProviderState) -> Iterator[str]:
    """Serve on 127.0.0.1 (a free port) and yield the base URL (``http://127.0.0.1:<port>/v1``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, name="openai-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
