"""Build a tiny, randomly initialised Gemma 3 vision-language model for tests and the offline demo.

The real drafting model, MedGemma 1.5 4B-it, is a Gemma 3 checkpoint. We cannot download it in
tests or in the offline demo, so this module writes a miniature model of the *same architecture*
(``Gemma3ForConditionalGeneration`` + ``Gemma3Processor``) to a folder. The worker then opens that
folder with exactly the loading code it uses for the real model
(``AutoProcessor`` / ``AutoModelForImageTextToText``), so the whole pipeline -- chat template,
image placeholders, vision tower, projector, generation, decoding -- is exercised for real.

The weights are random: the drafts it writes are word salad, but deterministic word salad
(greedy decoding, fixed seed) that depends on the image.

Nothing is downloaded: the tokenizer is a small BPE trained here on a built-in paragraph of
medical-ish English. Building the default model takes well under a second and a few MB on disk.

Command line: ``python -m inference.demo_model OUT_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inference.backends.base import THOUGHT_END, THOUGHT_START

# Gemma's special tokens, in the order of their ids here. <pad>=0, <eos>=1, <bos>=2 as in the
# real Gemma vocabulary; the rest get small ids instead of Gemma's 105/106/255999/262144.
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE_SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    EOS,
    BOS,
    UNK,
    START_OF_TURN,
    END_OF_TURN,
    BOI,
    EOI,
    IMAGE_SOFT,
    THOUGHT_START,
    THOUGHT_END,
)

# Gemma 3's chat template (as published with google/gemma-3-4b-it and MedGemma): a system message
# is not a turn of its own, its text is prepended to the first user turn; image items render as
# <start_of_image>, which the processor expands to the full image token sequence.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# Training text for the toy tokenizer: enough vocabulary that random generations decode to
# recognisable word pieces.
_CORPUS = """\
Describe the image. The slide shows a section of tissue stained with haematoxylin and eosin.
There is a well circumscribed lesion with a fibrous capsule. The cells are arranged in sheets,
nests and glands. Nuclei are round to oval with fine chromatin and small nucleoli. Mitotic figures
are rare. No necrosis is seen. The surrounding stroma is oedematous with a mild chronic
inflammatory infiltrate of lymphocytes and plasma cells. The margins appear clear.
The photograph shows an erythematous plaque on the skin of the forearm with fine scale.
The border is irregular and the colour is variable, brown and black with areas of regression.
There is a pigmented macule, a nodule, an ulcer, a papule and a vesicle. No bleeding.
The chest radiograph shows clear lungs, a normal heart size and no pleural effusion.
There is consolidation in the right lower lobe consistent with pneumonia. The mediastinum is
not widened. The bones are intact. Impression: findings are suggestive of infection.
The retina shows the optic disc, the macula and vessels. There are haemorrhages and exudates.
Findings: epithelium, dermis, epidermis, mucosa, submucosa, muscle, fat, vessel, nerve, gland,
duct, lumen, cyst, tumour, carcinoma, adenoma, melanoma, naevus, benign, malignant, atypia,
dysplasia, invasion, metastasis, grade, stage, high, low, moderate, severe, left, right, upper,
lower, small, large, normal, abnormal, likely, unlikely, recommend, biopsy, follow up, review.
Patient age 54, size 12 mm, 3 cm, 0.5 cm, 100 percent. Quality: good; artefact: none (blurred).
"""

# Printable ASCII plus the metaspace marker and newline: every plain-English prompt, and every
# control token written as text, can be encoded without <unk>.
_ALPHABET = [chr(c) for c in range(33, 127)] + ["\u2581", "\n"]


def _build_tokenizer(vocab_size: int) -> Any:
    """Train a small SentencePiece-style BPE (metaspace, single digits) on the built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    # "never" prepend, like Gemma: the chat template controls whitespace itself.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    # Like Gemma's tokenizer: plain `tokenizer(text)` prepends <bos>. The chat template writes
    # <bos> itself, and the processor then encodes without adding special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_SOFT},
        padding_side="left",
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    # <start_of_turn>, <end_of_turn> and the thinking markers are special in the sense that
    # `skip_special_tokens=True` drops them when decoding.
    fast.add_special_tokens(
        {"extra_special_tokens": [START_OF_TURN, END_OF_TURN, THOUGHT_START, THOUGHT_END]},
        replace_extra_special_tokens=False,
    )
    return fast


def build_demo_model(
    out_dir: Path | str,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 1,
    head_dim: int = 16,
    sliding_window: int = 512,
    vocab_size: int = 1024,
    vocab_extra: int = 0,
    vision_hidden_size: int = 32,
    vision_intermediate_size: int = 64,
    vision_num_layers: int = 1,
    vision_num_heads: int = 2,
    image_size: int = 64,
    patch_size: int = 16,
    mm_tokens_per_image: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random Gemma 3 (model, processor, tokenizer, chat template) into `out_dir`.

    The folder opens with ``AutoProcessor.from_pretrained`` and
    ``AutoModelForImageTextToText.from_pretrained`` without network access.

    Args:
        out_dir: Folder to write (created if missing; existing files are overwritten).
        hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim,
            sliding_window: Gemma 3 text decoder shape.
        vocab_size: Target size of the toy BPE vocabulary. The small corpus may yield fewer.
        vocab_extra: Extra embedding rows beyond the tokenizer's vocabulary (the real Gemma 3
            pads its embedding matrix the same way). They never decode to text.
        vision_hidden_size, vision_intermediate_size, vision_num_layers, vision_num_heads:
            SigLIP vision tower shape.
        image_size, patch_size: Images are resized to ``image_size`` squared and cut into
            ``(image_size // patch_size) ** 2`` patches.
        mm_tokens_per_image: Soft tokens per image after average pooling; must be a perfect
            square whose side divides the patch grid side.
        seed: Seeds every random weight, so the same arguments give the same model.

    Returns:
        The folder, as a ``Path``.
    """
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        GenerationConfig,
        SiglipVisionConfig,
    )

    grid = image_size // patch_size
    side = math.isqrt(mm_tokens_per_image)
    if image_size % patch_size or side * side != mm_tokens_per_image or grid % side:
        # Gemma3MultiModalProjector average-pools the grid x grid patches down to side x side.
        raise ValueError(
            f"mm_tokens_per_image={mm_tokens_per_image} must be a perfect square whose side "
            f"divides the {grid}x{grid} patch grid (image_size={image_size}, "
            f"patch_size={patch_size})"
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eos_ids = [ids[EOS], ids[END_OF_TURN]]  # instruction-tuned Gemma ends a turn with either

    layer_types = [
        # Gemma 3 interleaves 5 sliding-window layers with 1 global layer; keep at least one of
        # each so both attention paths run even in a 2-layer model.
        "full_attention" if (i + 1) % 6 == 0 or i == num_layers - 1 else "sliding_attention"
        for i in range(num_layers)
    ]
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer) + vocab_extra,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=sliding_window,
        layer_types=layer_types,
        max_position_embeddings=8192,
        pad_token_id=ids[PAD],
        bos_token_id=ids[BOS],
        eos_token_id=eos_ids,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_hidden_layers=vision_num_layers,
        num_attention_heads=vision_num_heads,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,  # as in Gemma 3: the projector pools the patch embeddings
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=mm_tokens_per_image,
        boi_token_index=ids[BOI],
        eoi_token_index=ids[EOI],
        image_token_index=ids[IMAGE_SOFT],
    )
    config.pad_token_id = ids[PAD]
    config.bos_token_id = ids[BOS]
    config.eos_token_id = eos_ids

    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(config)
    # Gemma initialises the projector to zero, which would make every image look the same.
    # Randomise it (deterministically) so that the draft depends on the picture.
    projector = model.model.multi_modal_projector.mm_input_projection_weight
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        noise = torch.randn(projector.shape, generator=gen, device="cpu")
        projector.copy_(noise * config.initializer_range)
    # Random weights could open with <eos> (an empty draft, which the app rejects) or wander
    # into control tokens. Only this demo folder's generation config steers away from that:
    # no control tokens ever, and a first token that is visible text.
    whitespace_ids = [
        i
        for i in range(len(tokenizer))
        if i not in ids.values() and not tokenizer.decode([i]).strip()
    ]
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=eos_ids,
        pad_token_id=ids[PAD],
        do_sample=False,
        suppress_tokens=[i for t, i in ids.items() if t not in (EOS, END_OF_TURN)]
        + list(range(len(tokenizer), text_config.vocab_size)),  # vocab_extra rows: no text
        begin_suppress_tokens=eos_ids + whitespace_ids,
    )
    model.eval()

    processor = Gemma3Processor(
        image_processor=_image_processor(image_size),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=mm_tokens_per_image,
    )
    with quiet_progress_bars():
        processor.save_pretrained(out)
        model.save_pretrained(out)  # safetensors
    # A note for humans who find the folder: these are not real weights.
    (out / "DEMO_MODEL.json").write_text(
        json.dumps(
            {
                "note": "Tiny randomly initialised Gemma 3 for tests/demo; not a medical model.",
                "seed": seed,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            indent=2,
        )
        + "\n"
    )
    return out


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (save/load shards) for the block, then restore them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _image_processor(image_size: int) -> Any:
    """Gemma 3's image processor: the torchvision one if installed, else the PIL one.

    Both save as ``Gemma3ImageProcessor``; picking the PIL class directly avoids the
    "falling back to PIL" warning when torchvision is absent.
    """
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import Gemma3ImageProcessor as Proc
    else:
        from transformers import Gemma3ImageProcessorPil as Proc
    return Proc(
        size={"height": image_size, "width": image_size},
        do_pan_and_scan=False,
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m inference.demo_model OUT_DIR [--hidden-size N ...]``.

    Every keyword argument of `build_demo_model` is an option (``--num-layers 8`` ...).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    for name, param in inspect.signature(build_demo_model).parameters.items():
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            parser.add_argument("--" + name.replace("_", "-"), type=int, default=param.default)
    args = vars(parser.parse_args(argv))
    print(build_demo_model(args.pop("out_dir"), **args))


if __name__ == "__main__":
    main()
