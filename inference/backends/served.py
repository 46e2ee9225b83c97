"""Drafting backend: MedGemma served by vLLM (or any OpenAI-compatible server) over HTTP.

At scale, sites run MedGemma on a vLLM cluster behind ``/v1/chat/completions`` and the Celery
workers only send requests: no torch, no GPU, no model download in the worker. This backend
sends exactly the conversation the transformers backend renders (optional system message, then
one user turn: the instruction, then the images), decodes greedily (``temperature: 0``) and
returns the same ``DraftResult``.

Only the standard library is used for HTTP (``urllib.request``), so the backend adds no
dependency. Each attempt opens a fresh connection: drafting takes seconds, a TCP/TLS handshake
milliseconds.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import json
import logging
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from PIL import Image as PILImage

from imaging import pixels

from .base import (
    THOUGHT_END,
    THOUGHT_START,
    BackendError,
    DraftRequest,
    DraftResult,
    validate_request,
)

logger = logging.getLogger(__name__)

# MedGemma 1.5 may open a thinking trace with <unused94> and close it with <unused95> before the
# answer. vLLM keeps them in the text by default (they are not "special" tokens for
# skip_special_tokens); other servers may strip them, and then there is nothing to split on.
# Only seen when a server is asked not to skip special tokens: never part of a draft.
_TRAILING_CONTROL = ("<end_of_turn>", "<eos>")

# Worth another attempt: overload, rate limiting, gateway trouble, a restarting server.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_IMAGE_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}
# PNG stores these modes losslessly; anything else is converted to RGB first.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
_ERROR_MESSAGE_CHARS = 300
# /v1/models is a cheap call: a short timeout so a down server never delays init for long, and
# at most one look-up per interval while the revision is still unknown.
_MODELS_TIMEOUT = 5.0
_REVISION_RECHECK_SECONDS = 60.0
UNKNOWN_REVISION = "served:unknown"


class _Transient(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn a POST into a bodiless GET and forward the
    Authorization header to whatever host the redirect names."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # -> urllib raises HTTPError with the 3xx status


class ServedBackend:
    """Draft image descriptions with a model served over an OpenAI-compatible chat API.

    Args:
        model: The served model name, as the server lists it in ``GET /v1/models`` (vLLM's
            ``--served-model-name``, by default the Hub id ``google/medgemma-1.5-4b-it``).
        base_url: The server, e.g. ``http://vllm:8000`` or ``http://vllm:8000/v1`` (``/v1`` is
            appended when missing). Credentials in the URL (``https://user:pw@host``) are sent as
            HTTP Basic auth unless ``api_key`` is set, and never recorded.
        api_key: Sent as ``Authorization: Bearer <api_key>`` when not empty. Never logged.
        timeout: Socket timeout in seconds for one attempt (connect, and each wait for data).
        max_retries: Further attempts after the first for transient failures (connection
            errors, timeouts, HTTP 408/425/429/500/502/503/504).
        concurrency: Most requests this instance has in flight at once, across all threads;
            also the thread count of ``draft_many``.
        max_new_tokens: Cap on generated tokens; a request's own ``max_new_tokens`` is honoured
            up to this cap.
        image_format: ``"jpeg"`` (quality ``jpeg_quality``, small uploads) or ``"png"``
            (lossless: the server sees exactly the pixels of the request).
        jpeg_quality: JPEG quality, 1-95.
        backoff_base: First retry delay in seconds; doubles with each attempt, with jitter.
        backoff_max: Longest wait between attempts. A ``Retry-After`` longer than this is not
            waited out: the draft fails as transient, so the task queue can retry it later
            instead of a worker sleeping for minutes.
        extra_body: Extra JSON fields for every chat request (server-specific options, e.g.
            vLLM's ``{"skip_special_tokens": False}``).
        device: Accepted and ignored (the server owns the device), so the app can construct
            every backend with the same arguments.
    """

    name = "served"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str = "",
        timeout: float = 120.0,
        max_retries: int = 3,
        concurrency: int = 8,
        max_new_tokens: int = 512,
        image_format: str = "jpeg",
        jpeg_quality: int = 90,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        extra_body: dict[str, Any] | None = None,
        device: str | None = None,
        **_ignored: Any,
    ) -> None:
        if image_format.lower() not in _IMAGE_FORMATS:
            raise ValueError(f"unsupported image_format {image_format!r}: use 'jpeg' or 'png'")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.model_id = str(model)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.max_new_tokens = int(max_new_tokens)
        self.image_format = image_format.lower()
        self.jpeg_quality = int(jpeg_quality)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.extra_body = dict(extra_body or {})

        self.base_url, basic_auth = _split_credentials(base_url)
        self._api_root = self.base_url if self.base_url.endswith("/v1") else self.base_url + "/v1"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "medannot-served-backend/1",
        }
        # Private attribute, and not in repr(): the key must never reach a log line.
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        elif basic_auth:
            self._headers["Authorization"] = f"Basic {basic_auth}"
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._slots = threading.BoundedSemaphore(self.concurrency)

        self._revision: str | None = None
        self._revision_checked = float("-inf")
        self._revision_lock = threading.Lock()
        self._refresh_revision()  # best effort: a down server must not fail init

    def __repr__(self) -> str:
        return f"ServedBackend(model={self.model_id!r}, base_url={self.base_url!r})"

    # -- public API ---------------------------------------------------------------------------

    @property
    def model_revision(self) -> str:
        """``"served:"`` + the model's ``root`` (else ``id``) in ``GET /v1/models``.

        vLLM's ``root`` is the checkpoint it loaded (Hub id or folder). ``created`` is not
        used: vLLM stamps it at each request, so it identifies nothing. ``"served:unknown"``
        while the server cannot be asked; looked up again at most once a minute.
        """
        if self._revision is None:
            self._refresh_revision()
        return self._revision or UNKNOWN_REVISION

    def draft(self, request: DraftRequest) -> DraftResult:
        """Describe the request's images: one greedy chat completion, retried when transient.

        Raises ``BackendError(permanent=True)`` for a request the server rejects (HTTP 4xx
        other than 408/425/429) or that cannot be encoded, and ``BackendError(permanent=False)``
        once the retries for transient failures are spent.
        """
        validate_request(request)
        limit = min(request.max_new_tokens, self.max_new_tokens)
        messages, placeholders = self.messages(request)
        payload: dict[str, Any] = {
            **self.extra_body,
            "model": self.model_id,
            "messages": messages,
            "temperature": 0,  # greedy, like the transformers backend
            "max_tokens": limit,
            "stream": False,
        }
        body = json.dumps(payload).encode()
        url = self._api_root + "/chat/completions"
        data, attempts, seconds = self._post_with_retries(url, body)
        text, thinking, finish_reason, tokens_in, tokens_out = _parse_completion(data)
        generation: dict[str, Any] = {
            "do_sample": False,
            "temperature": 0,
            "max_new_tokens": limit,
            "backend_url": self.base_url,
            "attempts": attempts,
            "image_format": self.image_format,
            "finish_reason": finish_reason,
        }
        return DraftResult(
            text=text,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            seconds=seconds,
            prompt=render_prompt(messages, placeholders),
            model_id=self.model_id,
            model_revision=self.model_revision,
            backend=self.name,
            generation=generation,
            thinking=thinking,
            truncated=finish_reason == "length",
        )

    def prepare(self, requests: Sequence[DraftRequest]) -> list[DraftRequest]:
        """A server needs no batch built ahead: requests are checked and sent one by one."""
        return list(requests)

    def generate(self, prepared: list[DraftRequest]) -> list[DraftResult | BackendError]:
        """The drafts of a prepared batch, a failed image's slot holding its BackendError."""
        return self.draft_many(prepared)

    def draft_many(self, requests: Sequence[DraftRequest]) -> list[DraftResult | BackendError]:
        """Draft requests concurrently (at most ``concurrency`` at once); results in order.

        Unlike the transformers backend, a failure does not raise: each request's slot holds
        its ``DraftResult`` or the ``BackendError`` it failed with, so one bad image or one
        unlucky retry budget never costs the other drafts. Callers must check each item.
        """
        if not requests:
            return []

        def one(request: DraftRequest) -> DraftResult | BackendError:
            try:
                return self.draft(request)
            except BackendError as exc:
                return exc
            except Exception as exc:  # a bug, not the server: retrying cannot help
                logger.exception("served draft failed unexpectedly")
                error = BackendError(f"unexpected error: {exc!r}", permanent=True)
                error.__cause__ = exc
                return error

        workers = min(self.concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="served-draft") as pool:
            return list(pool.map(one, requests))

    def messages(self, request: DraftRequest) -> tuple[list[dict[str, Any]], list[str]]:
        """OpenAI chat messages for the request, and a placeholder text for each image.

        Same conversation as ``TransformersBackend.messages``: optional system message, then
        one user message with the instruction first and the images after it, as data URLs.
        """
        msgs: list[dict[str, Any]] = []
        if request.system:
            msgs.append({"role": "system", "content": request.system})
        content: list[dict[str, Any]] = [{"type": "text", "text": request.instruction}]
        placeholders = []
        for i, image in enumerate(request.images, start=1):
            try:
                data, mime = encode_image(image, self.image_format, quality=self.jpeg_quality)
            except Exception as exc:  # an image PIL cannot write: retrying cannot help
                raise BackendError(f"image {i} cannot be encoded: {exc}", permanent=True) from exc
            url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            content.append({"type": "image_url", "image_url": {"url": url}})
            digest = hashlib.sha256(data).hexdigest()[:16]
            placeholders.append(
                f"<image {i}: {image.width}x{image.height} {self.image_format} sha256:{digest}>"
            )
        msgs.append({"role": "user", "content": content})
        return msgs, placeholders

    # -- HTTP ---------------------------------------------------------------------------------

    def _post_with_retries(self, url: str, body: bytes) -> tuple[dict[str, Any], int, float]:
        """POST until success: (response JSON, attempts made, wall seconds of the last one)."""
        last = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                with self._slots:  # bound in-flight requests across all threads
                    started = time.perf_counter()
                    data = self._request(url, body, timeout=self.timeout)
                    return data, attempt, time.perf_counter() - started
            except _Transient as exc:
                last = str(exc)
                if attempt > self.max_retries:
                    break
                delay = self._backoff(attempt, exc.retry_after)
                if delay is None:
                    raise BackendError(
                        f"{self.base_url}: {last}; the server asks to retry after "
                        f"{exc.retry_after:.0f}s",
                        permanent=False,
                    ) from exc
                logger.warning(
                    "served draft attempt %d/%d failed (%s); retrying in %.2fs",
                    attempt,
                    self.max_retries + 1,
                    last,
                    delay,
                )
                time.sleep(delay)
        raise BackendError(
            f"{self.base_url}: failed after {self.max_retries + 1} attempt(s): {last}",
            permanent=False,
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt; None when Retry-After exceeds the cap."""
        if retry_after is not None and retry_after > self.backoff_max:
            return None
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        # "Equal jitter": workers that failed together do not all come back together.
        delay = random.uniform(delay / 2, delay)
        return max(delay, retry_after or 0.0)

    def _request(self, url: str, body: bytes | None, *, timeout: float) -> dict[str, Any]:
        """One HTTP exchange. Raises _Transient or BackendError(permanent=True)."""
        req = urllib.request.Request(
            url, data=body, headers=self._headers, method="POST" if body is not None else "GET"
        )
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            status = f"HTTP {exc.code}: {message}" if message else f"HTTP {exc.code}"
            if exc.code in RETRYABLE_STATUSES:
                raise _Transient(status, _retry_after(exc.headers.get("Retry-After"))) from exc
            if 300 <= exc.code < 400:
                status += " (redirects are not followed: check base_url)"
            raise BackendError(f"{self.base_url}: {status}", permanent=True) from exc
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, ssl.SSLCertVerificationError):
                # A wrong certificate stays wrong: configuration, not weather.
                raise BackendError(f"{self.base_url}: {reason}", permanent=True) from exc
            if isinstance(reason, TimeoutError):
                raise _Transient(f"timed out after {timeout:g}s") from exc
            raise _Transient(f"connection failed: {reason!r}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            # A proxy's HTML page or a cut-off body: the server side is misbehaving, retry.
            raise _Transient(f"response is not JSON: {raw[:80]!r}") from exc
        if not isinstance(data, dict):
            raise _Transient(f"response is not a JSON object: {raw[:80]!r}")
        return data

    def _refresh_revision(self) -> None:
        """Ask ``GET /v1/models`` for the model's root; quietly give up when unreachable."""
        with self._revision_lock:
            now = time.monotonic()
            if self._revision is not None or now - self._revision_checked < (
                _REVISION_RECHECK_SECONDS
            ):
                return
            self._revision_checked = now
            try:
                data = self._request(
                    self._api_root + "/models", None, timeout=min(self.timeout, _MODELS_TIMEOUT)
                )
            except (_Transient, BackendError) as exc:
                logger.info("could not list the served models (%s); revision unknown", exc)
                return
            for card in data.get("data") or []:
                if isinstance(card, dict) and card.get("id") == self.model_id:
                    self._revision = "served:" + str(card.get("root") or card["id"])
                    return
            logger.warning("%s does not list the model %r", self.base_url, self.model_id)


# -- helpers --------------------------------------------------------------------------------------


def encode_image(
    image: PILImage.Image, fmt: str = "jpeg", *, quality: int = 90
) -> tuple[bytes, str]:
    """The image as file bytes for a data URL, and its MIME type.

    JPEG: transparency is flattened onto white, as the Gemma 3 processor does before the
    model sees it. PNG keeps the image's own mode, so the server's conversion is the same as
    the local processor's and the pixels are exact.
    """
    mime = _IMAGE_FORMATS[fmt][1]
    if fmt == "jpeg":
        image = _to_rgb(image)
    elif image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    # a served picture: pixels and colour profile only, never the source's comment or EXIF
    if fmt == "jpeg":
        return pixels.encode_jpeg(image, quality=quality), mime
    return pixels.encode_png(image), mime


def _to_rgb(image: PILImage.Image) -> PILImage.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def render_prompt(messages: list[dict[str, Any]], placeholders: list[str]) -> str:
    """The messages as JSON, each image's data URL replaced by its placeholder.

    This is what a draft stores as its prompt: the full request, minus megabytes of base64.
    """
    rendered = []
    images = iter(placeholders)
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": next(images)}}
                if part.get("type") == "image_url"
                else part
                for part in content
            ]
        rendered.append({**msg, "content": content})
    return json.dumps(rendered, ensure_ascii=False)


def split_thinking(content: str) -> tuple[str, str]:
    """(answer, thinking trace) from MedGemma output that may think aloud first.

    ``<unused94>trace<unused95>answer`` -> ("answer", "trace"). A trace opened but never closed
    (the token limit hit first) leaves no answer. A missing start marker (stripped by the
    server) still splits on the end marker. Without markers, everything is the answer.
    """
    if THOUGHT_END in content:
        head, _, answer = content.rpartition(THOUGHT_END)
        thinking = head.split(THOUGHT_START, 1)[1] if THOUGHT_START in head else head
        return _clean(answer), thinking.strip()
    if THOUGHT_START in content:
        answer, _, thinking = content.partition(THOUGHT_START)
        return _clean(answer), thinking.strip()
    return _clean(content), ""


def _clean(text: str) -> str:
    text = text.strip()
    while text.endswith(_TRAILING_CONTROL):
        for token in _TRAILING_CONTROL:
            text = text.removesuffix(token).rstrip()
    return text


def _parse_completion(data: dict[str, Any]) -> tuple[str, str, str, int, int]:
    """(answer, thinking, finish_reason, prompt tokens, completion tokens) of a chat.completion."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError) as exc:
        summary = str(data)[:200]
        raise BackendError(f"malformed chat completion: {summary}", permanent=False) from exc
    content = message.get("content") or ""
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    text, thinking = split_thinking(str(content))
    # vLLM with a reasoning parser moves the trace into its own field.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip() and not thinking:
        thinking = reasoning.strip()
    usage = data.get("usage") or {}
    return (
        text,
        thinking,
        str(choice.get("finish_reason") or ""),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )


def _split_credentials(base_url: str) -> tuple[str, str]:
    """(URL without credentials, query, fragment or trailing slash; base64 "user:pw" or "")."""
    parts = urllib.parse.urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {parts.scheme!r} URL")
    basic = ""
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return clean, basic


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's error text (OpenAI, vLLM or FastAPI shape), truncated."""
    try:
        raw = exc.read()
    except Exception:  # the body is a courtesy: the status code decides
        return ""
    message: Any = raw.decode("utf-8", "replace")
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = err.get("message") or message
        elif isinstance(err, str):
            message = err
        elif data.get("message"):
            message = data["message"]
        elif data.get("detail"):
            message = data["detail"]
    message = " ".join(str(message).split())
    if len(message) > _ERROR_MESSAGE_CHARS:
        message = message[: _ERROR_MESSAGE_CHARS - 1] + "\u2026"
    return message


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
