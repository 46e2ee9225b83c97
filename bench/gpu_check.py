"""GPU check of the drafting backend, for a CUDA machine (no database, no broker needed).

    python bench/gpu_check.py [--workdir DIR] [--skip-big]

1. The offline demo model on CUDA: the weights are placed by accelerate's device_map (never
   loaded on the CPU first), in bfloat16, and a batch with one unusable picture returns that
   picture's error in its own slot while the others are drafted.
2. A random Gemma 3 with MedGemma 1.5 4B's shape (34 decoder layers of 2560, SigLIP 27 × 1152
   at 896 px, 256 image tokens, a 262k embedding): peak host memory of a load with the
   device_map against the old load-then-move, each in a fresh process, and drafting
   throughput at batch 8 against batch 1 measured in the same run (output tokens per second:
   random weights stop at different lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MEDGEMMA_4B_SHAPE = dict(
    hidden_size=2560,
    intermediate_size=10240,
    num_layers=34,
    num_heads=8,
    num_kv_heads=4,
    head_dim=256,
    sliding_window=1024,
    vision_hidden_size=1152,
    vision_intermediate_size=4304,
    vision_num_layers=27,
    vision_num_heads=16,
    image_size=896,
    patch_size=14,
    mm_tokens_per_image=256,
)
GEMMA_VOCAB = 262_208


def _pictures(n: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def _requests(n: int, size: int, max_new_tokens: int):
    from inference.backends.base import DraftRequest

    return [
        DraftRequest(
            images=[picture],
            instruction="Describe this skin lesion: morphology, colour, border.",
            max_new_tokens=max_new_tokens,
        )
        for picture in _pictures(n, size)
    ]


def check_demo(workdir: Path) -> dict:
    import torch
    from PIL import Image

    from inference.backends.base import BackendError, DraftRequest
    from inference.backends.transformers import TransformersBackend
    from inference.demo_model import build_demo_model

    folder = build_demo_model(workdir / "demo-model")
    backend = TransformersBackend(str(folder), device="cuda", max_new_tokens=32)
    params = list(backend.model.parameters())
    bad = DraftRequest(images=[Image.new("RGB", (0, 0))], instruction="Describe.")
    good = _requests(2, 64, 32)
    results = backend.draft_many([good[0], bad, good[1]])
    return {
        "param_devices": sorted({str(p.device) for p in params}),
        "param_dtypes": sorted({str(p.dtype) for p in params}),
        "hf_device_map": getattr(backend.model, "hf_device_map", None),
        "slots": [type(r).__name__ for r in results],
        "bad_slot_permanent": isinstance(results[1], BackendError) and results[1].permanent,
        "draft_device": results[0].generation.get("device"),
        "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def build_big(workdir: Path) -> Path:
    import torch

    from inference.demo_model import build_demo_model

    folder = workdir / "medgemma-4b-shaped"
    if (folder / "config.json").exists():
        return folder
    torch.set_default_dtype(torch.bfloat16)
    try:
        for device in ("cuda", "cpu"):  # random init on the GPU: seconds, not minutes
            torch.set_default_device(device)
            try:
                build_demo_model(folder, vocab_extra=GEMMA_VOCAB - 1024, **MEDGEMMA_4B_SHAPE)
                break
            except RuntimeError as exc:
                print(f"building on {device} failed: {exc}", file=sys.stderr, flush=True)
    finally:
        torch.set_default_device("cpu")
        torch.set_default_dtype(torch.float32)
    return folder


def load_peak_rss(folder: Path, placement: str) -> dict:
    """Load in a fresh process; its peak resident host memory, in MiB."""
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
import torch
import inference.backends.transformers as t
if {placement!r} == "to":
    t.model_placement = lambda device: {{}}
started = time.perf_counter()
backend = t.TransformersBackend({str(folder)!r}, device="cuda")
if {placement!r} == "to":
    backend.model.to(backend.device)
torch.cuda.synchronize()
print(json.dumps({{"seconds": round(time.perf_counter() - started, 1),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "device": str(next(backend.model.parameters()).device)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(folder: Path, *, n1: int, n8: int, max_new_tokens: int) -> dict:
    from inference.backends.transformers import TransformersBackend

    backend = TransformersBackend(str(folder), device="cuda", max_new_tokens=max_new_tokens)
    backend.draft_many(_requests(2, 896, 8))  # warm-up: kernels, allocator
    figures = {}
    for batch, n in ((1, n1), (8, n8)):
        requests = _requests(n, 896, max_new_tokens)
        started = time.perf_counter()
        tokens = drafts = 0
        for i in range(0, n, batch):
            for result in backend.draft_many(requests[i : i + batch]):
                tokens += result.tokens_out
                drafts += 1
        seconds = time.perf_counter() - started
        figures[f"batch_{batch}"] = {
            "drafts": drafts,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "drafts_per_s": round(drafts / seconds, 3),
        }
    figures["speedup_tokens_8_vs_1"] = round(
        figures["batch_8"]["tokens_per_s"] / figures["batch_1"]["tokens_per_s"], 2
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medannot-gpu-"))
    report: dict = {"demo": check_demo(workdir)}
    print(json.dumps(report, indent=1), flush=True)
    if not args.skip_big:
        started = time.perf_counter()
        folder = build_big(workdir)
        report["big_build_seconds"] = round(time.perf_counter() - started, 1)
        report["load_device_map"] = load_peak_rss(folder, "device_map")
        report["load_then_move"] = load_peak_rss(folder, "to")
        report["throughput"] = throughput(folder, n1=8, n8=16, max_new_tokens=args.max_new_tokens)
    report["host_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
