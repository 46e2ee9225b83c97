"""Drafting backend: a Gemma 3 vision-language model (MedGemma) run with Hugging Face transformers.

Only the Celery worker imports this module (lazily): it is the one place that imports torch and
transformers, so the web process never pays for them.

The same code loads the real ``google/medgemma-1.5-4b-it`` and the tiny random model that
``inference.demo_model.build_demo_model`` writes for tests and the offline demo.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from inference.demo_model import quiet_progress_bars

from .base import (
    THOUGHT_END,
    THOUGHT_START,
    BackendError,
    DraftRequest,
    DraftResult,
    draft_one,
    validate_request,
)

# MedGemma 1.5 may open a thinking trace with <unused94> and close it with <unused95> before the
# answer. A draft is the answer only.

ATTN_IMPLEMENTATION = "sdpa"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _resolve_device(device: str | None) -> torch.device:
    """The explicit device, or CUDA when one is visible, else CPU. Fails loudly on a missing GPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        # A worker deployed for the GPU must not silently draft on CPU (hundreds of times slower).
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} was requested but no CUDA device is visible "
                "(check the driver, CUDA_VISIBLE_DEVICES and that torch was built with CUDA)"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def model_placement(device: torch.device) -> dict[str, Any]:
    """Where `from_pretrained` puts the weights. On CUDA they load straight onto the GPU
    (accelerate's device_map): 8 GB of MedGemma never pass through host memory."""
    if device.type == "cuda":
        return {"device_map": {"": str(device)}}
    return {}


def _resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bfloat16 on GPU, float32 on CPU, unless told otherwise. float16 is refused."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    name = dtype.removeprefix("torch.")
    if name in ("float16", "half"):
        # Gemma's activations overflow float16 (inf/NaN, then empty or garbage drafts).
        raise ValueError("float16 is not supported for Gemma models: use bfloat16 or float32")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}: use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def weights_digest(folder: Path | str) -> str:
    """``"sha256:"`` + 16 hex digits over a local model folder's weight files.

    The files (``*.safetensors``, ``*.bin``) are hashed in name order, each preceded by its
    name, and read in chunks so multi-GB checkpoints need no extra memory.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weight files in {folder}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``owner/name``; anything else with a path shape is meant as a folder."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def _hub_revision(model: str, revision: str | None) -> tuple[str | None, str]:
    """Pin a Hub model to one commit: (revision to load, commit hash or "unknown").

    Resolving once and loading processor and weights from that revision guarantees both come
    from the same repository state, and the draft records exactly which weights wrote it.
    """
    from transformers.utils.hub import resolve_revision

    resolved = resolve_revision(model, revision)  # offline mode: answered from the local cache
    commit = getattr(resolved, "resolved", None)
    if commit is None and revision is not None and len(revision) == 40:
        commit = revision  # already a commit hash
    return resolved, commit or "unknown"


@dataclass
class PreparedBatch:
    """A batch's model inputs, built on the CPU ahead of its turn on the device.

    `requests` are the ones that could be prepared; `errors` holds, by position in the
    original batch, the requests that could not (a bad image), so their slots report it."""

    requests: list[DraftRequest]
    prompts: list[str]
    limits: list[int]
    inputs: Any
    prepared_at: float
    errors: dict[int, BackendError] = field(default_factory=dict)
    size: int = 0  # requests asked for, prepared or not


class TransformersBackend:
    """Draft image descriptions with a Gemma 3 image-text-to-text model, greedy decoding.

    Args:
        model: Hub id (``"google/medgemma-1.5-4b-it"``) or a local model folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None`` (CUDA if visible, else CPU).
            An explicit CUDA device that is not visible raises ``RuntimeError``.
        dtype: ``"bfloat16"`` or ``"float32"``; ``None`` means bfloat16 on GPU, float32 on CPU.
        max_new_tokens: Cap on generated tokens; a request's own ``max_new_tokens`` is honoured
            up to this cap.
        revision: Hub branch, tag or commit to load (ignored for local folders).
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_new_tokens: int = 512,
        revision: str | None = None,
    ) -> None:
        self.model_id = str(model)
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.max_new_tokens = max_new_tokens

        load_kwargs: dict[str, Any] = {}
        if Path(self.model_id).is_dir():
            self.model_revision = weights_digest(self.model_id)
        elif _looks_like_path(self.model_id):
            # Otherwise the Hub client reports a baffling "invalid repo id".
            raise FileNotFoundError(
                f"model folder {self.model_id} does not exist (for the offline demo model, "
                f"run `python manage.py build_demo_model {self.model_id}`)"
            )
        else:
            pinned, self.model_revision = _hub_revision(self.model_id, revision)
            if pinned is not None:
                load_kwargs["revision"] = pinned

        with quiet_progress_bars():  # no tqdm bars in worker logs
            self.processor = AutoProcessor.from_pretrained(self.model_id, **load_kwargs)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.model_id,
                dtype=self.dtype,
                attn_implementation=ATTN_IMPLEMENTATION,
                **model_placement(self.device),
                **load_kwargs,
            )
        if self.device.type != "cuda":
            self.model.to(self.device)
        self.model.eval()

        tokenizer = self.processor.tokenizer
        # Batches are left-padded so that every prompt ends where generation starts.
        tokenizer.padding_side = "left"
        # Stop at <end_of_turn> too, whatever the checkpoint's generation config says.
        self._eos_ids = self._stop_token_ids() | {
            t for t in [self._token_id("<end_of_turn>")] if t is not None
        }
        self._thought_start = self._token_id(THOUGHT_START)
        self._thought_end = self._token_id(THOUGHT_END)

    # -- public API ---------------------------------------------------------------------------

    def draft(self, request: DraftRequest) -> DraftResult:
        """Describe the request's images; one greedy generation. Raises BackendError."""
        return draft_one(self, request)

    def draft_many(self, requests: Sequence[DraftRequest]) -> list[DraftResult | BackendError]:
        """Draft several requests in one left-padded batch; results in request order, a
        failed image's slot holding its BackendError.

        Greedy decoding makes each result the same as drafting its request alone (up to
        floating-point noise from the padding). ``seconds`` is the batch's generation time,
        shared by every result; ``generation["batch_size"]`` says how many shared it.
        """
        return self.generate(self.prepare(requests))

    def prepare(self, requests: Sequence[DraftRequest]) -> PreparedBatch:
        """CPU work of a batch (templates, tokens, pixel tensors), kept apart from ``generate``
        so that a worker can prepare the next batch while the device runs this one. A
        request that cannot be prepared is set aside with its error; the rest go on."""
        errors: dict[int, BackendError] = {}
        for i, req in enumerate(requests):
            try:
                validate_request(req)
            except BackendError as exc:
                errors[i] = exc
        good = [i for i in range(len(requests)) if i not in errors]
        try:
            prompts, inputs = self._encode([requests[i] for i in good])
        except BackendError:
            # One input spoils the batch's encoding: find it by encoding each alone.
            for i in good:
                try:
                    self._encode([requests[i]])
                except BackendError as exc:
                    errors[i] = exc
            good = [i for i in good if i not in errors]
            prompts, inputs = self._encode([requests[i] for i in good])
        ready = [requests[i] for i in good]
        limits = [min(req.max_new_tokens, self.max_new_tokens) for req in ready]
        return PreparedBatch(
            ready, prompts, limits, inputs, time.perf_counter(), errors, len(requests)
        )

    def _encode(self, requests: Sequence[DraftRequest]) -> tuple[list[str], Any]:
        if not requests:
            return [], None
        prompts, inputs = self.build_inputs(requests, to_device=False)
        if self.device.type == "cuda":
            inputs = inputs.to(self.device, non_blocking=True)  # pinned copies overlap
        return prompts, inputs

    def generate(self, batch: PreparedBatch) -> list[DraftResult | BackendError]:
        """Run one prepared batch on the device: a result, or an error, per request asked for.
        Raises BackendError when the whole batch fails (out of memory: transient)."""
        results = iter(self._generate(batch) if batch.requests else [])
        return [batch.errors.get(i) or next(results) for i in range(batch.size)]

    def _generate(self, batch: PreparedBatch) -> list[DraftResult]:
        inputs = batch.inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        input_len = inputs["input_ids"].shape[1]
        tokens_in = inputs["attention_mask"].sum(dim=1).tolist()  # per row, without padding
        try:
            started = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    do_sample=False,  # always greedy: older MedGemma configs sample by default
                    max_new_tokens=max(batch.limits),
                    eos_token_id=sorted(self._eos_ids),
                )
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - started
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            # Transient: a smaller batch or a less busy GPU may succeed.
            raise BackendError(f"out of GPU memory: {exc}", permanent=False) from exc
        except Exception as exc:
            raise BackendError(f"generation failed: {exc}", permanent=True) from exc

        generated = out[:, input_len:].tolist()
        decode = self.processor.tokenizer.decode
        results = []
        for row, (prompt, limit) in enumerate(zip(batch.prompts, batch.limits, strict=True)):
            ids = self._until_stop(generated[row][:limit])
            truncated = not ids or ids[-1] not in self._eos_ids
            answer, thought = self._split_thought(ids)
            generation = self._generation_params(limit, len(batch.requests))
            generation["generate_started"] = time.time() - (time.perf_counter() - started)
            results.append(
                DraftResult(
                    text=decode(answer, skip_special_tokens=True).strip(),
                    thinking=decode(thought, skip_special_tokens=True).strip(),
                    truncated=truncated,
                    tokens_in=int(tokens_in[row]),
                    tokens_out=len(ids),
                    seconds=seconds,
                    prompt=prompt,
                    model_id=self.model_id,
                    model_revision=self.model_revision,
                    backend=self.name,
                    generation=generation,
                )
            )
        return results

    def build_inputs(
        self, requests: Sequence[DraftRequest], *, to_device: bool = True
    ) -> tuple[list[str], Any]:
        """Render and encode requests: (prompt texts, model inputs on the model's device).

        The prompt texts show the template's output before image expansion (one
        ``<start_of_image>`` per image), which is what a draft records as its prompt.
        Raises ``BackendError(permanent=True)`` when an image or text cannot be processed.
        """
        conversations = [self.messages(req) for req in requests]
        try:
            prompts = [
                self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
                for conv in conversations
            ]
            inputs = self.processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                # User text must not write control tokens: "<start_of_image>" typed in an
                # instruction is encoded as plain text, not as an image slot.
                sanitize_control_tokens=True,
                # Left padding (set on the tokenizer); token_type_ids mark the image tokens.
                processor_kwargs={"padding": True},
            )
        except Exception as exc:  # bad image, unprocessable text: retrying cannot help
            raise BackendError(f"could not prepare the model input: {exc}", permanent=True) from exc
        if to_device:
            inputs = inputs.to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        elif self.device.type == "cuda":
            inputs = inputs.pin_memory() if hasattr(inputs, "pin_memory") else inputs
        return prompts, inputs

    @staticmethod
    def messages(request: DraftRequest) -> list[dict[str, Any]]:
        """MedGemma chat messages: optional system text, then one user turn (text, then images)."""
        msgs: list[dict[str, Any]] = []
        if request.system:
            # Gemma has no system turn: its chat template prepends this to the first user turn.
            msgs.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        content: list[dict[str, Any]] = [{"type": "text", "text": request.instruction}]
        content += [{"type": "image", "image": image} for image in request.images]
        msgs.append({"role": "user", "content": content})
        return msgs

    # -- helpers ------------------------------------------------------------------------------

    def _generation_params(self, max_new_tokens: int, batch_size: int) -> dict[str, Any]:
        return {
            "do_sample": False,
            "max_new_tokens": max_new_tokens,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "attn_implementation": self.model.config._attn_implementation,
            "batch_size": batch_size,
        }

    def _token_id(self, token: str) -> int | None:
        tokenizer = self.processor.tokenizer
        tid = tokenizer.convert_tokens_to_ids(token)
        return None if tid is None or tid == tokenizer.unk_token_id else tid

    def _stop_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def _until_stop(self, ids: list[int]) -> list[int]:
        """Generated ids up to and including the first stop token; drops the padding after it."""
        for i, tid in enumerate(ids):
            if tid in self._eos_ids:
                return ids[: i + 1]
        return ids

    def _split_thought(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """Split a MedGemma thinking trace off the answer: (answer ids, thought ids).

        An unfinished trace (opened but never closed before the token limit) leaves no answer.
        """
        if self._thought_end is not None and self._thought_end in ids:
            cut = len(ids) - ids[::-1].index(self._thought_end)
            return ids[cut:], ids[:cut]
        if self._thought_start is not None and self._thought_start in ids:
            start = ids.index(self._thought_start)
            return ids[:start], ids[start:]
        return ids, []
