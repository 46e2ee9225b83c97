"""The served-model backend against a local OpenAI-compatible server running the demo model.

No database. Run: ``HF_HUB_OFFLINE=1 .venv/bin/pytest -q tests/test_served_backend.py``.
"""

from __future__ import annotations

import io
import json
import random
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from inference.backends.base import BackendError, DraftRequest, DraftResult
from inference.backends.served import ServedBackend, encode_image, split_thinking
from tests.served_model_server import ServedModelServer, served_model

SYSTEM = "You are an expert pathologist."
INSTRUCTION = "Describe the image."
# Tests must not wait: retries back off for milliseconds.
FAST = {"backoff_base": 0.01, "backoff_max": 1.0}


def _noise(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def _request(seed: int = 1, **kwargs) -> DraftRequest:
    kwargs.setdefault("instruction", INSTRUCTION)
    kwargs.setdefault("max_new_tokens", 12)
    kwargs.setdefault("images", [_noise(seed)])
    return DraftRequest(**kwargs)


@pytest.fixture(scope="module")
def server(demo_model_dir: Path) -> Iterator[ServedModelServer]:
    with served_model(demo_model_dir) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: ServedModelServer) -> None:
    server.reset()


def _backend(server: ServedModelServer, **kwargs) -> ServedBackend:
    kwargs = {**FAST, **kwargs}
    return ServedBackend(server.model_name, base_url=server.url, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- parity with the transformers backend -------------------------------------------------------


def test_png_draft_equals_the_transformers_backend(server: ServedModelServer) -> None:
    request = _request(
        system=SYSTEM, images=[_noise(1), _noise(2, (64, 80)).convert("RGBA")], max_new_tokens=20
    )
    served = _backend(server, image_format="png").draft(request)
    local = server.local_draft(request)

    assert served.text and served.text == local.text
    assert (served.tokens_in, served.tokens_out) == (local.tokens_in, local.tokens_out)
    assert (served.thinking, served.truncated) == (local.thinking, local.truncated)
    assert served.backend == "served" and served.model_id == server.model_name
    assert served.model_revision == f"served:{server.model_root}"
    assert served.generation == {
        "do_sample": False,
        "temperature": 0,
        "max_new_tokens": 20,
        "backend_url": server.url,
        "attempts": 1,
        "image_format": "png",
        "finish_reason": served.generation["finish_reason"],
    }
    assert served.seconds > 0
    # What went over the wire: system message, then instruction, then the images, greedy.
    body = server.requests[-1]["body"]
    assert body["temperature"] == 0 and body["max_tokens"] == 20
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_jpeg_draft_equals_the_transformers_backend_on_the_jpeg_pixels(
    server: ServedModelServer,
) -> None:
    image = _noise(3)
    served = _backend(server).draft(_request(images=[image]))  # jpeg is the default

    data, mime = encode_image(image, "jpeg", quality=90)
    assert mime == "image/jpeg"
    decoded = Image.open(io.BytesIO(data))
    local = server.local_draft(_request(images=[decoded]))
    assert (served.text, served.tokens_in, served.tokens_out) == (
        local.text,
        local.tokens_in,
        local.tokens_out,
    )
    assert server.requests[-1]["body"]["messages"][0]["content"][1]["image_url"]["url"].startswith(
        "data:image/jpeg;base64,"
    )


def test_truncated_when_max_new_tokens_is_hit(server: ServedModelServer) -> None:
    result = _backend(server, image_format="png").draft(_request(max_new_tokens=3))
    assert result.truncated is True
    assert result.tokens_out == 3
    assert result.generation["finish_reason"] == "length"
    assert (
        result.text
        == _backend(server, image_format="png").draft(_request()).text[: len(result.text)]
    )  # a prefix of the longer draft: same greedy path, cut short
    # The backend's own cap wins over a larger request.
    capped = _backend(server, max_new_tokens=2).draft(_request(max_new_tokens=50))
    assert capped.tokens_out == 2 and capped.generation["max_new_tokens"] == 2
    assert server.requests[-1]["body"]["max_tokens"] == 2


def test_stored_prompt_has_placeholders_not_base64(server: ServedModelServer) -> None:
    request = _request(system=SYSTEM, images=[_noise(4), _noise(5, (70, 50))])
    result = _backend(server).draft(request)

    assert "base64" not in result.prompt
    assert not re.search(r"[A-Za-z0-9+/=]{200,}", result.prompt)
    messages = json.loads(result.prompt)
    assert messages[0] == {"role": "system", "content": SYSTEM}
    parts = messages[1]["content"]
    assert parts[0] == {"type": "text", "text": INSTRUCTION}
    assert re.fullmatch(r"<image 1: 96x64 jpeg sha256:[0-9a-f]{16}>", parts[1]["image_url"]["url"])
    assert re.fullmatch(r"<image 2: 70x50 jpeg sha256:[0-9a-f]{16}>", parts[2]["image_url"]["url"])
    assert len(result.prompt) < 600


# -- concurrency --------------------------------------------------------------------------------


def test_draft_many_is_concurrent_and_in_order(server: ServedModelServer) -> None:
    requests = [_request(seed=10 + i, instruction=f"Describe image {i}.") for i in range(6)]
    expected = [r.text for r in _backend(server, concurrency=1).draft_many(requests)]
    assert len(set(expected)) > 1  # different images, different drafts: order is observable

    server.reset()
    server.delay = 0.4  # every request waits, outside the model lock
    started = time.perf_counter()
    results = _backend(server, concurrency=3).draft_many(requests)
    elapsed = time.perf_counter() - started

    assert [r.text for r in results] == expected
    assert server.max_in_flight == 3  # bounded by `concurrency`
    assert elapsed < 6 * 0.4  # serial would take at least 2.4 s; two waves of 3 take ~0.8 s


def test_draft_many_isolates_failures(server: ServedModelServer) -> None:
    broken = DraftRequest(images=[Image.new("RGB", (0, 0))], instruction=INSTRUCTION)
    results = _backend(server).draft_many([_request(seed=1), broken, _request(seed=2)])

    assert isinstance(results[0], DraftResult) and isinstance(results[2], DraftResult)
    assert isinstance(results[1], BackendError) and results[1].permanent
    assert server.request_count == 2  # the broken request never left the worker
    assert _backend(server).draft_many([]) == []


# -- retries ------------------------------------------------------------------------------------


def test_transient_503_is_retried(server: ServedModelServer) -> None:
    server.fail_next(2, status=503)
    result = _backend(server).draft(_request())
    assert result.text
    assert result.generation["attempts"] == 3
    assert server.request_count == 3


def test_retry_after_is_honoured(server: ServedModelServer) -> None:
    server.fail_next(1, status=429, retry_after="0.5")
    started = time.perf_counter()
    result = _backend(server).draft(_request())
    assert time.perf_counter() - started >= 0.5
    assert result.generation["attempts"] == 2


def test_retry_after_beyond_the_cap_fails_transiently_at_once(server: ServedModelServer) -> None:
    server.fail_next(1, status=503, retry_after="3600")
    started = time.perf_counter()
    with pytest.raises(BackendError, match="retry after 3600s") as info:
        _backend(server).draft(_request())
    assert info.value.permanent is False
    assert time.perf_counter() - started < 1
    assert server.request_count == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_permanent_without_retry(server: ServedModelServer, status) -> None:
    server.fail_next(1, status=status, message="x" * 1000)
    with pytest.raises(BackendError) as info:
        _backend(server).draft(_request())
    assert info.value.permanent is True
    assert f"HTTP {status}" in str(info.value)
    assert len(str(info.value)) < 400  # the server's message, truncated
    assert server.request_count == 1


def test_unknown_model_is_a_permanent_404(server: ServedModelServer) -> None:
    backend = ServedBackend("no-such-model", base_url=server.url, **FAST)
    assert backend.model_revision == "served:unknown"
    with pytest.raises(BackendError, match="does not exist") as info:
        backend.draft(_request())
    assert info.value.permanent is True


def test_retries_exhausted_is_transient(server: ServedModelServer) -> None:
    server.fail_next(5, status=502)
    with pytest.raises(BackendError, match="after 3 attempt") as info:
        _backend(server, max_retries=2).draft(_request())
    assert info.value.permanent is False
    assert server.request_count == 3


def test_server_down_is_transient_and_init_does_not_fail() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    backend = ServedBackend("medgemma-demo", base_url=url, max_retries=2, **FAST)
    assert backend.model_revision == "served:unknown"
    with pytest.raises(BackendError, match="after 3 attempt.*connection failed") as info:
        backend.draft(_request())
    assert info.value.permanent is False
    assert time.perf_counter() - started < 3


def test_timeout_is_respected_then_retried(server: ServedModelServer) -> None:
    server.hang_next(1, seconds=5)
    started = time.perf_counter()
    with pytest.raises(BackendError, match="timed out") as info:
        _backend(server, timeout=0.3, max_retries=0).draft(_request())
    assert info.value.permanent is False
    assert time.perf_counter() - started < 1.5

    server.hang_next(1, seconds=5)
    result = _backend(server, timeout=0.5, max_retries=1).draft(_request())
    assert result.generation["attempts"] == 2


# -- auth, URL, revision ------------------------------------------------------------------------


def test_api_key_is_sent_as_bearer_and_never_shown(server: ServedModelServer) -> None:
    backend = _backend(server, api_key="sk-secret-123", device="cuda:3", unknown_setting=1)
    server.fail_next(1, status=401, message="bad key")
    with pytest.raises(BackendError) as info:
        backend.draft(_request())
    assert "sk-secret" not in str(info.value) and "sk-secret" not in repr(backend)
    result = backend.draft(_request())
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in json.dumps(result.generation) + result.prompt


def test_url_credentials_become_basic_auth_and_are_not_recorded(
    server: ServedModelServer,
) -> None:
    url = server.url.replace("http://", "http://alice:p%40ss@") + "/v1/"
    result = ServedBackend(server.model_name, base_url=url, **FAST).draft(_request())
    assert result.generation["backend_url"] == server.url + "/v1"
    assert server.requests[-1]["headers"]["Authorization"] == "Basic YWxpY2U6cEBzcw=="
    assert result.model_revision == f"served:{server.model_root}"


def test_configuration_errors_fail_at_init() -> None:
    with pytest.raises(ValueError, match="http"):
        ServedBackend("m", base_url="localhost:8000")
    with pytest.raises(ValueError, match="image_format"):
        ServedBackend("m", base_url="http://127.0.0.1:9", image_format="webp", max_retries=0)


# -- thinking traces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "text", "thinking"),
    [
        ("<unused94>thought\nLook at nuclei.<unused95>Benign naevus.", "Benign naevus.", None),
        ("thought\nLook at nuclei.<unused95>Benign naevus.", "Benign naevus.", None),
        ("No trace at all.", "No trace at all.", ""),
        ("Answer<end_of_turn>", "Answer", ""),
    ],
)
def test_thinking_trace_is_split(server, content, text, thinking) -> None:
    server.canned_next(content)
    result = _backend(server).draft(_request())
    assert result.text == text
    assert result.thinking == (thinking if thinking is not None else "thought\nLook at nuclei.")
    assert result.truncated is False


def test_unfinished_thinking_trace_leaves_no_answer(server: ServedModelServer) -> None:
    server.canned_next("<unused94>thought\nStill thinking", finish_reason="length")
    result = _backend(server).draft(_request())
    assert (result.text, result.thinking, result.truncated) == ("", "thought\nStill thinking", True)


def test_split_thinking_without_markers_keeps_everything() -> None:
    assert split_thinking("  plain  ") == ("plain", "")
    assert split_thinking("a<unused94>b<unused95>c<unused95>d") == ("d", "b<unused95>c")
