"""A small OpenAI-compatible chat server for tests: vLLM's API in front of the demo model.

``POST /v1/chat/completions`` turns the OpenAI messages back into a ``DraftRequest`` and runs
the transformers backend (one shared instance, one request at a time), so a served draft can be
compared with a local one token for token. ``GET /v1/models`` lists the model.

Test hooks queue one-shot behaviours for the next chat requests (fail with a status, hang,
answer with canned text), add a delay to every request, and record what arrived::

    with served_model(demo_model_dir) as server:
        server.fail_next(2, status=503)
        backend = ServedBackend(server.model_name, base_url=server.url)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from inference.backends.base import BackendError, DraftRequest, DraftResult
from inference.backends.served import THOUGHT_END, THOUGHT_START

DEFAULT_MODEL_NAME = "medgemma-demo"


@dataclass
class _Action:
    kind: str  # "fail", "hang" or "canned"
    status: int = 503
    message: str = ""
    retry_after: str | None = None
    seconds: float = 0.0
    content: str = ""
    finish_reason: str = "stop"


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServedModelServer:
    """The server, its backend and its test hooks. Use `served_model` to start one."""

    def __init__(
        self,
        model_dir: Path | str,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        backend: Any | None = None,
    ) -> None:
        if backend is None:
            from inference.backends.transformers import TransformersBackend

            backend = TransformersBackend(str(model_dir), device="cpu")
        self.backend = backend
        self.model_name = model_name
        self.model_root = str(model_dir)
        self.delay = 0.0  # seconds every chat request waits, outside the model lock
        self.requests: list[dict[str, Any]] = []  # {"headers": ..., "body": ...} per chat request
        self.in_flight = 0
        self.max_in_flight = 0
        self._model_lock = threading.Lock()  # the model runs one generation at a time
        self._state = threading.Lock()
        self._actions: deque[_Action] = deque()
        self._closing = threading.Event()  # releases hanging handlers on close
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="served-model-server", daemon=True
        )

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, without ``/v1``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ServedModelServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, release hanging handlers and free the port."""
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- test hooks ---------------------------------------------------------------------------

    def fail_next(
        self, n: int = 1, *, status: int = 503, message: str = "", retry_after: str | None = None
    ) -> None:
        """The next `n` chat requests get an OpenAI-style error with this status."""
        message = message or f"injected failure {status}"
        self._queue(n, _Action("fail", status=status, message=message, retry_after=retry_after))

    def hang_next(self, n: int = 1, *, seconds: float = 5.0) -> None:
        """The next `n` chat requests wait `seconds` before answering (a client times out)."""
        self._queue(n, _Action("hang", seconds=seconds))

    def canned_next(self, content: str, n: int = 1, *, finish_reason: str = "stop") -> None:
        """The next `n` chat requests answer `content` without running the model."""
        self._queue(n, _Action("canned", content=content, finish_reason=finish_reason))

    def reset(self) -> None:
        """Forget queued behaviours, recorded requests and the delay."""
        with self._state:
            self._actions.clear()
            self.requests.clear()
            self.delay = 0.0
            self.max_in_flight = self.in_flight

    @property
    def request_count(self) -> int:
        """Chat requests received (including failed ones)."""
        with self._state:
            return len(self.requests)

    def local_draft(self, request: DraftRequest) -> DraftResult:
        """Draft with the server's own backend, directly: the reference for comparisons."""
        with self._model_lock:
            return self.backend.draft(request)

    # -- internals ----------------------------------------------------------------------------

    def _queue(self, n: int, action: _Action) -> None:
        with self._state:
            self._actions.extend([action] * n)

    def _begin(self, headers: dict[str, str], body: Any) -> _Action | None:
        with self._state:
            self.requests.append({"headers": headers, "body": body})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._actions.popleft() if self._actions else None

    def _end(self) -> None:
        with self._state:
            self.in_flight -= 1

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_name,
                    "object": "model",
                    "created": int(time.time()),  # like vLLM: the time of the request
                    "owned_by": "medannot-tests",
                    "root": self.model_root,
                    "parent": None,
                }
            ],
        }

    def _complete(self, body: Any) -> dict[str, Any]:
        """Run one chat completion: the payload checks of a strict server, then the model."""
        try:
            request = self._draft_request(body)
        except (AttributeError, TypeError, KeyError) as exc:  # parts of the wrong shape
            raise _BadRequest(f"malformed request: {exc}") from exc
        try:
            with self._model_lock:
                result = self.backend.draft(request)
        except BackendError as exc:
            raise _BadRequest(str(exc), 400 if exc.permanent else 503) from exc
        content = result.text
        if result.thinking:
            # As vLLM sends MedGemma's trace: the markers stay in the text. A trace cut off by
            # the token limit has no end marker and no answer.
            closed = result.text or not result.truncated
            tail = THOUGHT_END + result.text if closed else ""
            content = THOUGHT_START + result.thinking + tail
        return _completion(
            self.model_name,
            content,
            "length" if result.truncated else "stop",
            result.tokens_in,
            result.tokens_out,
        )

    def _draft_request(self, body: Any) -> DraftRequest:
        if not isinstance(body, dict):
            raise _BadRequest("the body must be a JSON object")
        if body.get("model") != self.model_name:
            raise _BadRequest(f"The model `{body.get('model')}` does not exist.", 404)
        if body.get("temperature") != 0:
            raise _BadRequest("this test server only decodes greedily: send temperature 0")
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if not isinstance(limit, int) or limit < 1:
            raise _BadRequest("max_tokens must be a positive integer")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list")
        system = ""
        if messages[0].get("role") == "system":
            system = _text_of(messages[0].get("content"))
            messages = messages[1:]
        if len(messages) != 1 or messages[0].get("role") != "user":
            raise _BadRequest("expected one user message after the optional system message")
        content = messages[0].get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        texts, images = [], []
        for part in content:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                images.append(_decode_data_url(part.get("image_url", {}).get("url", "")))
            else:
                raise _BadRequest(f"unsupported content part {part.get('type')!r}")
        return DraftRequest(
            images=images, instruction="\n".join(texts), system=system, max_new_tokens=limit
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet test output

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, server._models())
                elif self.path == "/health":
                    self._json(200, {})
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}")
                    return
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                action = server._begin(dict(self.headers.items()), body)
                try:
                    self._chat(body, action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nobody to answer
                finally:
                    server._end()

            def _chat(self, body: Any, action: _Action | None) -> None:
                if server.delay:
                    server._closing.wait(server.delay)
                if action is not None and action.kind == "fail":
                    headers = {"Retry-After": action.retry_after} if action.retry_after else {}
                    self._error(action.status, action.message, headers)
                    return
                if action is not None and action.kind == "hang":
                    if server._closing.wait(action.seconds):
                        return
                if action is not None and action.kind == "canned":
                    self._json(
                        200, _completion(server.model_name, action.content, action.finish_reason)
                    )
                    return
                try:
                    self._json(200, server._complete(body))
                except _BadRequest as exc:
                    self._error(exc.status, str(exc))
                except Exception as exc:  # a bug here: answer like a crashing server would
                    self._error(500, f"internal error: {exc!r}")

            def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def _error(
                self, status: int, message: str, headers: dict[str, str] | None = None
            ) -> None:
                # The shape vLLM and OpenAI use.
                error = {"message": message, "type": "BadRequestError", "code": status}
                self._json(status, {"object": "error", "error": error}, headers)

        return Handler


def _completion(
    model: str, content: str, finish_reason: str, tokens_in: int = 0, tokens_out: int = 0
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def _decode_data_url(url: str) -> Image.Image:
    header, sep, data = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise _BadRequest("images must be base64 data URLs")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except (binascii.Error, OSError, ValueError) as exc:
        raise _BadRequest(f"cannot decode image: {exc}") from exc
    return image


@contextlib.contextmanager
def served_model(
    model_dir: Path | str, *, model_name: str = DEFAULT_MODEL_NAME, backend: Any | None = None
) -> Iterator[ServedModelServer]:
    """Serve the model folder on 127.0.0.1 (ephemeral port) for the block."""
    server = ServedModelServer(model_dir, model_name=model_name, backend=backend).start()
    try:
        yield server
    finally:
        server.close()
