"""Ways to obtain a SICOG model: from separate pretrained parts, from a checkpoint, tiny, or real-size on meta.

Also the projector-only checkpoint that stage 1 writes and stage 1.5 reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from sicog.model.checkpoint_config import read_checkpoint_config
from sicog.model.configuration import CLIP_L14_336, SicogConfig
from sicog.model.modeling import SicogForConditionalGeneration
from sicog.model.processing import SicogProcessor, separator_ids
from sicog.model.release_format import (
    PROJECTOR_BIN,
    PROJECTOR_PREFIX,
    RELEASE_RESAMPLER_SETTINGS,
    ConversionError,
    first_line,
    read_json_object,
    read_tensor_file,
    resampler_from_release,
)
from sicog.model.tokens import IMAGE_TOKEN

PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_CONFIG = "projector_config.json"

# Qwen2-7B-Instruct's architecture (no download needed to instantiate it on the meta device).
QWEN2_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
}
QWEN2_7B_IMAGE_TOKEN_ID = 151646  # first id after Qwen2's 151646 tokens: where "<image>" is added
# The ids the published code writes between slices whatever the LLM: LLaMA's "," and "\n". The
# released checkpoints were trained with these rows of Qwen2's embedding table.
RELEASE_SEPARATORS = (29892, 13)
RELEASE_INFERENCE_LONG_SIDE = 1024  # the published generation scripts resize images to this long side first
SEPARATOR_CHOICES = ("auto", "release", "tokenizer")


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``<image>`` as a special token when missing; return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        # False: keep the tokenizer's other special tokens special. Positional, as the flag's name changed between
        # transformers versions (replace_additional_special_tokens, then replace_extra_special_tokens).
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, False)
    if tokenizer.pad_token is None:
        raise ValueError("tokenizer has no pad token; set one (Qwen2 uses <|endoftext|>)")
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def choose_separators(tokenizer: PreTrainedTokenizerBase, vocab_size: int, separators: str = "auto") -> tuple[int, int]:
    """Slice separator ids: ``release`` (29892, 13), ``tokenizer`` (its own "," and "\\n"), or ``auto``:
    the release's when the vocabulary holds them (what published tooling expects), else the tokenizer's."""
    if separators not in SEPARATOR_CHOICES:
        raise ValueError(f"separators={separators!r} is not one of {SEPARATOR_CHOICES}")
    if separators == "release" or (separators == "auto" and max(RELEASE_SEPARATORS) < vocab_size):
        return RELEASE_SEPARATORS
    return separator_ids(tokenizer)


def make_config(
    vision_config, text_config, tokenizer: PreTrainedTokenizerBase, separators: str = "auto", **settings
) -> SicogConfig:
    """A config whose image id comes from ``tokenizer`` and separators from :func:`choose_separators`."""
    vocab_size = text_config.vocab_size if hasattr(text_config, "vocab_size") else text_config["vocab_size"]
    comma, newline = choose_separators(tokenizer, vocab_size, separators)
    return SicogConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        slice_comma_id=comma,
        slice_newline_id=newline,
        **settings,
    )


def _set_generation_ids(model: SicogForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> None:
    """Stop at the tokenizer's eos as well as at every stop id the generation config already has (the LLM's
    own: Qwen2-7B-Instruct stops at <|im_end|> and <|endoftext|>); pad with the tokenizer's pad id."""
    eos = model.generation_config.eos_token_id
    stops = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None


def local_model_folder(path: str | os.PathLike) -> str:
    """``path``, or the snapshot it stands for when it is a model's folder in a Hugging Face cache
    (``.../hub/models--ORG--NAME``: what ``huggingface-cli download --cache-dir`` fills, and what the published
    scripts' ``CLIP_CKPT_DIR`` names). transformers reads such a folder as a checkpoint without ``config.json``:
    a CLIP config then silently takes its defaults (patch 32, not 14). Any other path is returned as it is.

    Raises ``OSError`` naming the path when there is no such folder and it cannot be a Hub id, or when a cache folder
    holds no snapshot of the revision ``refs/main`` names.
    """
    if mistyped_path(path):
        raise OSError(f"{path}: no such folder")
    folder = Path(path)
    cache_folder = folder.name.startswith("models--") and (folder / "snapshots").is_dir()
    if not cache_folder or (folder / "config.json").exists():
        return str(path)
    repo_id = folder.name[len("models--"):].replace("--", "/")
    try:
        return snapshot_download(repo_id, cache_dir=folder.parent, local_files_only=True)
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError) as error:
        raise OSError(f"{path}: a Hugging Face cache folder of {repo_id} without a usable snapshot "
                      f"({first_line(error)}); give the snapshots/REVISION folder inside it") from None


def mistyped_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is no file or folder here and cannot be a Hugging Face Hub id either (an absolute path, one
    starting with ``.`` or ``~``, two slashes): transformers would look it up on the Hub and report a malformed id."""
    if Path(path).exists():
        return False
    try:  # sicog.data.sources.can_be_hub_id's test: the model package imports nothing else of SICOG
        validate_repo_id(str(path))
    except HFValidationError:
        return True
    return False


def build_from_parts(
    vision_path: str | os.PathLike,
    llm_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    **settings,
) -> tuple[SicogForConditionalGeneration, SicogProcessor]:
    """Join a pretrained CLIP vision tower and a pretrained causal LLM with a fresh resampler (stage 1 start).

    ``settings`` are :class:`SicogConfig` fields (``resampler_num_queries``, ``scale_resolution``, ...).
    """
    vision_path, llm_path = local_model_folder(vision_path), local_model_folder(llm_path)
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    add_image_token(tokenizer)
    vision = CLIPVisionModel.from_pretrained(vision_path, dtype=dtype, attn_implementation=attn_implementation)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype, attn_implementation=attn_implementation)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))
    config = make_config(vision.config, llm.config, tokenizer, **settings)
    model = SicogForConditionalGeneration(config, vision_tower=vision, language_model=llm).to(dtype=llm.dtype)
    # The composite's init resets its sub-configs' attention backend; set it again for every part.
    model.set_attn_implementation(attn_implementation)
    if (Path(llm_path) / "generation_config.json").is_file():
        # The LLM's own sampling defaults (Qwen2-7B-Instruct: temperature 0.7, top_p 0.8, top_k 20,
        # repetition_penalty 1.05) travel with every checkpoint built on it, as the published models inherit them.
        model.generation_config = GenerationConfig.from_pretrained(llm_path)
    _set_generation_ids(model, tokenizer)
    return model, SicogProcessor.from_config(tokenizer, config)


class CheckpointError(OSError, ValueError):
    """A checkpoint that cannot be loaded: a weights file missing, truncated or damaged (as a run killed while
    saving leaves it), a ``config.json`` or other JSON file that is no JSON object; the message names the file.

    An ``OSError``, as transformers' own errors about a checkpoint's files are (``sicog train`` and ``sicog
    generate`` catch those around loading), and a ``ValueError``, as the commands' other bad-input errors are:
    whichever a command catches, it reports the problem in one line.
    """


def load_pretrained(path: str | os.PathLike, **kwargs) -> tuple[SicogForConditionalGeneration, SicogProcessor]:
    """Load a full SICOG checkpoint (model + tokenizer) saved by :func:`save_pretrained`.

    Raises :class:`CheckpointError` when it cannot be loaded (a path that is no checkpoint, a missing,
    truncated or invalid file).
    """
    if mistyped_path(path):
        raise CheckpointError(f"no SICOG checkpoint at {path} (no such folder)")
    try:
        if Path(path).exists():
            # A config.json holding a JSON list or number would reach the config class as a TypeError naming no file,
            # and another model's (a plain Qwen2 folder) would load as SicogConfig's defaults, with only a warning.
            read_checkpoint_config(path)
        model, loading = SicogForConditionalGeneration.from_pretrained(path, output_loading_info=True, **kwargs)
        processor = SicogProcessor.from_pretrained(path, config=model.config)
    except (OSError, ValueError, SafetensorError) as error:
        if not Path(path).exists():
            raise CheckpointError(f"no folder {path}, and as a Hugging Face Hub id: {first_line(error)}") from error
        raise CheckpointError(_load_problem(Path(path), error)) from error
    if loading["missing_keys"]:
        # transformers initialises them at random and only logs a report: the model would train or generate from
        # noise and every command would succeed.
        missing = sorted(loading["missing_keys"])
        lora = any("lora_" in key for key in loading["unexpected_keys"])
        hint = ("; a LoRA run's checkpoint-N holds its adapters unmerged: load the run's output folder, where they "
                "are merged" if lora else "")
        raise CheckpointError(f"{path}: its weights lack {len(missing)} of the model's tensors "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}){hint}")
    return model, processor


def _load_problem(path: Path, error: Exception) -> str:
    """Why ``path`` did not load, naming the file: safetensors' and json's messages name none, so the damaged
    file of that kind in ``path`` is looked for; transformers' own messages name the missing file."""
    if isinstance(error, ConversionError):
        return str(error)
    if isinstance(error, SafetensorError):
        for weights in sorted(path.glob("*.safetensors")):
            try:
                with safe_open(str(weights), framework="pt"):  # reads the header, which covers the whole file
                    pass
            except SafetensorError as damaged:
                return f"{weights}: not a readable safetensors file ({first_line(damaged)})"
    elif isinstance(error, ValueError):
        for file in sorted(path.glob("*.json")):
            try:
                read_json_object(file)
            except ConversionError as damaged:
                return str(damaged)
    reason = first_line(error)
    # transformers' own message may name the folder already: a path with a folder in it, as a whole (a bare name
    # such as "files" could be a word of the message)
    named = "/" in str(path) and re.search(rf"(?<![\w./-]){re.escape(str(path))}(?![\w/-])", reason)
    return reason if named else f"cannot load the checkpoint {path}: {reason}"


def share_weights_like_config(directory: str | os.PathLike) -> None:
    """Give every ``*.safetensors`` file under ``directory`` the permissions of a config file beside it.

    safetensors 0.8 writes weights through a temporary file that it creates private (0600) and renames into
    place (safetensors issue #782): on a cluster's shared disk nobody but the writer could load them. The
    configs saved with them were written by a plain ``open`` and have the user's umask. Call it after
    anything saves weights (and their config) into ``directory``.
    """
    for weights in Path(directory).rglob("*.safetensors"):
        config = next(weights.parent.glob("*config.json"), None)
        if config is not None:
            os.chmod(weights, stat.S_IMODE(config.stat().st_mode))


def save_pretrained(
    model: SicogForConditionalGeneration,
    processor: SicogProcessor,
    path: str | os.PathLike,
    *,
    remote_code: bool = False,
) -> None:
    """Save a self-contained checkpoint: weights (safetensors), config, generation config, processor.

    ``remote_code``: also write the model's code and an ``auto_map`` (see :func:`with_remote_code`).
    """
    with with_remote_code(model, processor, enabled=remote_code):
        model.save_pretrained(path)
        processor.save_pretrained(path)
    share_weights_like_config(path)


_ABSENT = object()


@contextlib.contextmanager
def with_remote_code(model: SicogForConditionalGeneration, processor: SicogProcessor, *, enabled: bool = True):
    """While open, saving ``model`` / ``processor`` also writes the code files of ``sicog.model`` they need
    and an ``auto_map`` in ``config.json`` / ``processor_config.json``: the checkpoint then loads with
    ``trust_remote_code=True`` where this package is not installed (transformers' custom-code mechanism).
    """
    if not enabled:
        yield
        return
    # transformers reads the mark from the class (``register_for_auto_class``); it is undone on leaving.
    marks = {type(model): "AutoModelForImageTextToText", type(model.config): "AutoConfig",
             type(processor): "AutoProcessor"}
    before = {cls: cls.__dict__.get("_auto_class") for cls in marks}
    # The saves write an auto_map into each object: restored as it was, absent where it was (a later plain save of
    # `"auto_map": null` made a config.json that transformers cannot read).
    maps = [(obj, obj.__dict__.get("auto_map", _ABSENT)) for obj in (model.config, processor)]
    for cls, auto_class in marks.items():
        cls._auto_class = auto_class
    try:
        yield
    finally:
        for cls, value in before.items():
            if value is None:
                del cls._auto_class
            else:
                cls._auto_class = value
        for obj, auto_map in maps:
            if auto_map is _ABSENT:
                obj.__dict__.pop("auto_map", None)
            else:
                obj.auto_map = auto_map


def _projector_settings(config: SicogConfig) -> dict:
    return {
        "vision_hidden_size": config.vision_config.hidden_size,
        "text_hidden_size": config.text_config.hidden_size,
        "resampler_num_queries": config.resampler_num_queries,
        "resampler_attention": config.resampler_attention,
        "resampler_pooling": config.resampler_pooling,
        "resampler_cell_bins": config.resampler_cell_bins,
    }


def write_projector(state: dict[str, torch.Tensor], config: SicogConfig, path: str | os.PathLike) -> Path:
    """Write resampler weights and the settings they need to directory ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, path / PROJECTOR_FILE)
    (path / PROJECTOR_CONFIG).write_text(json.dumps(_projector_settings(config), indent=2) + "\n", encoding="utf-8")
    share_weights_like_config(path)
    return path / PROJECTOR_FILE


def save_projector(model: SicogForConditionalGeneration, path: str | os.PathLike) -> Path:
    """Write the resampler's weights (and the settings it needs) to ``path`` (a directory)."""
    return write_projector(model.resampler.state_dict(), model.config, path)


def projector_from_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy the resampler weights out of a saved full checkpoint (also one gathered from ZeRO-3)."""
    checkpoint = Path(checkpoint)
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    prefix = "resampler."
    state = {}
    for name in files:
        with safe_open(str(checkpoint / name), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefix):
                    state[key[len(prefix) :]] = handle.get_tensor(key)
    if not state:
        raise ValueError(f"checkpoint {checkpoint} holds no resampler weights")
    return write_projector(state, SicogConfig.from_pretrained(checkpoint), path)


def load_projector(model: SicogForConditionalGeneration, path: str | os.PathLike) -> None:
    """Load a projector-only checkpoint into ``model.resampler``: ours (a directory or its .safetensors
    file) or the published stage 1's ``mm_projector.bin`` (a torch pickle with ``model.mm_projector.*``).

    Shapes and settings are checked (a ``.bin`` needs the published resampler's settings:
    ``resampler_attention: cell``, ``resampler_pooling: roi_align``). A model that ZeRO-3 has already
    partitioned (one loaded with ``from_pretrained`` under ZeRO-3) is loaded through its full tensors; every
    rank must then call this.
    """
    path = Path(path)
    file = path
    if path.is_dir():
        published_only = (path / PROJECTOR_BIN).is_file() and not (path / PROJECTOR_FILE).is_file()
        file = path / (PROJECTOR_BIN if published_only else PROJECTOR_FILE)
    if not file.is_file():
        raise FileNotFoundError(f"no projector checkpoint at {file}")
    settings_file = file.parent / PROJECTOR_CONFIG
    if file.suffix == ".safetensors" and settings_file.is_file():
        saved = json.loads(settings_file.read_text(encoding="utf-8"))
        mine = _projector_settings(model.config)
        differ = {k: (saved[k], v) for k, v in mine.items() if k in saved and saved[k] != v}
        if differ:
            raise ValueError(f"projector {file} was trained with other settings (saved, model): {differ}")
    if file.suffix == ".safetensors":
        state = load_file(str(file))
    else:
        # A published projector has no settings file: its settings are those of the published resampler, and
        # weights trained for them load into another resampler without a shape error.
        differ = [k for k, v in RELEASE_RESAMPLER_SETTINGS.items() if getattr(model.config, k) != v]
        if differ:
            needs = ", ".join(f"{k}={v!r}" for k, v in RELEASE_RESAMPLER_SETTINGS.items())
            has = ", ".join(f"{k}={getattr(model.config, k)!r}" for k in differ)
            raise ValueError(f"projector {file} is a published projector and needs {needs}; this model has {has}")
        release = read_tensor_file(file)
        state = resampler_from_release({k: v for k, v in release.items() if k.startswith(PROJECTOR_PREFIX)})
        ignored = sorted(k for k in release if not k.startswith(PROJECTOR_PREFIX))
        if ignored:
            raise ValueError(f"projector {file} holds weights other than the projector: {ignored}")
    # A ZeRO-3 partitioned parameter holds a 0-element placeholder; ds_shape is its full shape.
    expected = {k: getattr(v, "ds_shape", v.shape) for k, v in model.resampler.state_dict(keep_vars=True).items()}
    problems = [k for k in expected if k not in state] + [k for k in state if k not in expected]
    problems += [k for k in state if k in expected and state[k].shape != expected[k]]
    if problems:
        raise ValueError(f"projector {file} does not fit this model's resampler: {problems}")
    partitioned = [p for p in model.resampler.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        model.resampler.load_state_dict(state)
        return
    import deepspeed  # only a model partitioned by DeepSpeed gets here

    # Every rank loads the file (the buffers are not partitioned, so each rank needs them); rank 0's
    # parameters are partitioned again on leaving.
    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        model.resampler.load_state_dict(state)


def tiny_text_config(
    vocab_size: int, hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2
) -> Qwen2Config:
    """A few-layer Qwen2 config for tests and the toy world."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def tiny_vision_config(
    hidden_size: int = 32, layers: int = 2, patch_size: int = 8, image_size: int = 32
) -> CLIPVisionConfig:
    """A few-layer CLIP vision config for tests and the toy world."""
    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden_size // 16),
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_config(tokenizer: PreTrainedTokenizerBase, **settings) -> SicogConfig:
    """A tiny SICOG config around ``tokenizer`` (small CLIP, 2-layer Qwen2, 16 queries, 64 px slices)."""
    defaults = {"separators": "tokenizer", "scale_resolution": 64, "max_slice_nums": 4, "resampler_num_queries": 16,
                "resampler_num_heads": 2}
    defaults.update(settings)
    vision = defaults.pop("vision_config", tiny_vision_config())
    text = defaults.pop("text_config", tiny_text_config(len(tokenizer)))
    return make_config(vision, text, tokenizer, **defaults)


def new_model(
    config: SicogConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[SicogForConditionalGeneration, SicogProcessor]:
    """A randomly initialised model and its processor."""
    model = SicogForConditionalGeneration(config)
    _set_generation_ids(model, tokenizer)
    return model, SicogProcessor.from_config(tokenizer, config)


def real_config(**settings) -> SicogConfig:
    """The published architecture: CLIP-ViT-L/14-336 + Qwen2-7B-Instruct, 144 queries, 7 slices, release layout."""
    settings.setdefault("inference_long_side", RELEASE_INFERENCE_LONG_SIDE)
    return SicogConfig(
        vision_config=CLIP_L14_336,
        text_config={"model_type": "qwen2", **QWEN2_7B},
        image_token_id=QWEN2_7B_IMAGE_TOKEN_ID,
        slice_comma_id=RELEASE_SEPARATORS[0],
        slice_newline_id=RELEASE_SEPARATORS[1],
        **settings,
    )
