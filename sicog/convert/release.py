"""Checkpoints in the published LLaVA ``llava_qwen`` format <-> SICOG checkpoints, tensor for tensor.

A published checkpoint is a directory with ``config.json`` (``model_type: llava_qwen``, the Qwen2
fields plus ``mm_*`` settings), weights in safetensors or ``.bin`` shards (LLM under ``model.`` and
``lm_head.``, resampler under ``model.mm_projector.``, and, once fine-tuned, the CLIP tower under
``model.vision_tower.vision_tower.vision_model.``), optionally ``mm_projector.bin`` (what stage 1
writes) and the tokenizer. A tower missing from the weights is read from ``mm_vision_tower`` or the
``vision_tower`` argument. Every tensor maps to exactly one tensor on the other side (the resampler's
output matrix is stored transposed); any key that maps nowhere, and any expected key that is
missing, is reported in one error, so nothing is dropped or invented.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from sicog.data.jsonl import blocked_reason
from sicog.data.staging import staged_folder
from sicog.model.builders import (
    RELEASE_INFERENCE_LONG_SIDE,
    RELEASE_SEPARATORS,
    _set_generation_ids,
    add_image_token,
    local_model_folder,
    share_weights_like_config,
)
from sicog.model.checkpoint_config import RELEASE_MODEL_TYPE, read_checkpoint_config
from sicog.model.configuration import CLIP_L14_336, SicogConfig
from sicog.model.modeling import SicogForConditionalGeneration
from sicog.model.release_format import (
    PROJECTOR_BIN,
    PROJECTOR_PREFIX,
    PROJECTOR_TYPES,
    RELEASE_RESAMPLER_SETTINGS,
    VISION_PREFIX,
    ConversionError,
    first_line,
    from_release_state,
    read_json_object,
    read_tensor_file,
    read_weights,
    state_problems,
    to_release_state,
)
from sicog.model.tokens import IMAGE_TOKEN

RELEASE_EMBEDDING, RELEASE_LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
# A tokenizer is saved as one of these (transformers finds the others from them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CLIP_L14_336_ID = "openai/clip-vit-large-patch14-336"
# Its folder in a Hugging Face cache (``huggingface-cli download --cache-dir``), as the published scripts name it.
CLIP_L14_336_CACHE = "models--" + CLIP_L14_336_ID.replace("/", "--")
# The only LLM the published code builds (LlavaQwenForCausalLM).
RELEASE_TEXT_MODEL_TYPE = "qwen2"
TOWER_PREFIX = "vision_tower."
# The tower's keys with CLIP's own prefix, as transformers saved a model it had loaded under ZeRO-3.
CLIP_PREFIXED = TOWER_PREFIX + "vision_model."
# What the published code hard-codes (slicing in train.py and the generation scripts, CLIP-L/14 patches).
RELEASE_GEOMETRY = {"scale_resolution": 336, "max_slice_nums": 7, "patch_size": 14}
# config.json fields of the LLaVA wrapper, not of the LLM.
LLAVA_FIELD_PREFIXES = ("mm_", "model_mode", "image_", "tokenizer_", "use_mm_proj", "vision_tower", "unfreeze_mm",
                        "tune_mm", "delay_load", "add_faster_video", "faster_token", "pos_skipping", "use_pos_skipping",
                        "feature_scale_mask", "s2_", "vision_resampler", "architectures", "model_type", "auto_map",
                        "jbu_ckpt", "add_time_instruction", "force_sample", "freeze_mm")


def text_config_from_release(config: dict) -> Qwen2Config:
    """The LLM's config: the release config without the LLaVA wrapper's fields."""
    fields = {k: v for k, v in config.items() if not k.startswith(LLAVA_FIELD_PREFIXES)}
    return Qwen2Config(**fields)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder``; :class:`ConversionError` naming the folder when it does not load."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConversionError(f"{folder}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    try:
        # A config given: transformers would otherwise read the folder's config.json (of a model type it does not
        # know) and blame a problem there on the tokenizer.
        return AutoTokenizer.from_pretrained(folder, config=PretrainedConfig())
    except Exception as error:  # noqa: BLE001 - tokenizers reports a damaged tokenizer.json as a bare Exception
        raise ConversionError(f"{folder}: its tokenizer does not load ({first_line(error)})") from None


def _names_clip_l14_336(source: str) -> bool:
    """Whether ``source`` names CLIP-L/14-336: its hub id (after any prefix), or its folder in a Hugging Face cache
    as the published scripts record it in ``mm_vision_tower`` (``.../models--openai--clip-vit-large-patch14-336``,
    or a ``snapshots/REVISION`` folder inside it), a path on the machine that trained."""
    path = Path(source)
    in_cache = path.name == CLIP_L14_336_CACHE or (path.parent.name == "snapshots"
                                                   and path.parent.parent.name == CLIP_L14_336_CACHE)
    return in_cache or source.rstrip("/").endswith(CLIP_L14_336_ID)


def _clip_tower(folder: str) -> CLIPVisionModel:
    """The CLIP vision tower saved in ``folder``; :class:`ConversionError` naming the folder and the weights when it
    lacks one or holds one in another shape (transformers only warns, and initialises those at random). Weights of
    no vision tower are left: a whole CLIP model's folder also holds the text tower."""
    tower, info = CLIPVisionModel.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True)
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing keys {sorted(info['missing_keys'])}")
    if info["mismatched_keys"]:
        wrong = [f"{key} {tuple(found)} != {tuple(needed)}" for key, found, needed in sorted(info["mismatched_keys"])]
        problems.append(f"shape mismatches {wrong}")
    if problems:
        raise ConversionError(f"{folder}: the CLIP tower's weights do not fit its config.json: " + "; ".join(problems))
    return tower


def _vision_state(weights: dict[str, torch.Tensor], release_config: dict, vision_tower: str | None, src: Path) -> tuple:
    """The tower's config and release-named weights: from the checkpoint if it holds them, else from the CLIP dir."""
    source = vision_tower or release_config.get("mm_vision_tower")
    has_tower = any(k.startswith(VISION_PREFIX) for k in weights)
    if has_tower and source is not None and _names_clip_l14_336(source) and not Path(source).is_dir():
        return CLIPVisionConfig(**CLIP_L14_336), {}  # weights in the checkpoint; the name fixes the shape
    if source is None or not Path(source).is_dir():
        raise ConversionError(
            f"{src}: needs the CLIP vision tower's directory "
            f"(config mm_vision_tower={release_config.get('mm_vision_tower')!r}"
            " is not a local directory); pass --vision-tower"
        )
    source = local_model_folder(source)
    if not (Path(source) / "config.json").is_file():
        # transformers would read the folder as a CLIP config of its defaults (patch 32), without a word.
        raise ConversionError(f"{source}: no config.json (not a CLIP checkpoint folder); pass --vision-tower")
    if has_tower:
        return CLIPVisionConfig.from_pretrained(source), {}
    tower = _clip_tower(source)
    return tower.config, {VISION_PREFIX + k: v for k, v in tower.state_dict().items()}


def _tie_lm_head(weights: dict[str, torch.Tensor], src: Path) -> None:
    """Give a tied checkpoint its ``lm_head.weight``: the input embedding, which transformers saves alone."""
    embedding, head = weights.get(RELEASE_EMBEDDING), weights.get(RELEASE_LM_HEAD)
    if embedding is None:
        return  # reported with the other missing keys
    if head is None:
        weights[RELEASE_LM_HEAD] = embedding
    elif not torch.equal(head, embedding):
        # Tying would overwrite one of them: converting must not drop weights.
        raise ConversionError(
            f"{src}: tie_word_embeddings is true but {RELEASE_LM_HEAD} differs from {RELEASE_EMBEDDING}"
        )


# Release config fields that choose how the published code computes image features, with the one value (the
# published code's default where the field is absent) that this model computes.
RELEASE_COMPUTATION = {"model_mode": ("uhd_v1", "llava"), "mm_vision_select_feature": ("patch", "patch")}


def _check_release_computation(src: Path, release_config: dict) -> None:
    """Refuse a release whose config makes the published code compute image features another way (its non-slicing
    ``llava`` mode, or the CLS token kept): converted, it would give other numbers without saying so."""
    for field, (supported, default) in RELEASE_COMPUTATION.items():
        value = release_config.get(field, default)
        if value != supported:
            absent = "" if field in release_config else " (absent: the published code's default)"
            raise ConversionError(f"{src}/config.json: {field} {value!r}{absent} is not {supported!r}, the only "
                                  "setting this model computes as the published code does")
    if release_config.get("rope_scaling") is not None:
        # The published stack's Qwen2 (transformers 4.40) has no RoPE scaling; this model would apply it.
        raise ConversionError(f"{src}/config.json: rope_scaling {json.dumps(release_config['rope_scaling'])} is set, "
                              "which the published code's Qwen2 does not apply; remove it (or set it to null) to "
                              "convert the model the published code runs")


def _check_output(src: Path, out: Path) -> None:
    """Refuse an ``out`` that converting could lose something in: ``src`` itself or a folder inside it, a file, or a
    folder that already holds files (an empty one is fine). Called before the weights are read."""
    source, target = src.resolve(), out.resolve()
    if target == source:
        raise ConversionError(f"output folder {out} is the checkpoint being converted ({src}); writing there would "
                              "overwrite it: choose another folder")
    if source in target.parents:
        raise ConversionError(f"output folder {out} lies inside the checkpoint being converted ({src}): choose a "
                              "folder outside it")
    if out.is_dir() and any(out.iterdir()):
        raise ConversionError(f"output folder {out} already holds files: remove it or choose another folder")
    if blocked := blocked_reason(out):
        raise ConversionError(f"output folder {out} {blocked}")


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` to write into, renamed to ``out`` when the block ends without error and removed
    otherwise: an interrupted conversion leaves no half-written ``out`` that looks like a checkpoint. Those left by
    conversions into ``out`` that were killed outright (SIGKILL, the out-of-memory killer), each a hidden copy of a
    whole checkpoint, go first."""
    target = out.resolve()
    with staged_folder(target, "converting") as staging:
        yield staging
        try:
            os.replace(staging, target)  # an empty ``out`` (allowed by _check_output) is replaced too
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise ConversionError(f"output folder {out} was filled by another conversion while this one ran; "
                                  "it is kept, and this one's copy is dropped") from None


def release_to_sicog(
    src: str | os.PathLike, out: str | os.PathLike, *, vision_tower: str | None = None, projector: str | None = None
) -> Path:
    """Convert a published ``llava_qwen`` checkpoint directory into a SICOG checkpoint at ``out``.

    ``out`` must be a new or empty folder outside ``src``; it appears only once the checkpoint is complete.
    """
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (not a published checkpoint directory)")
    release_config = read_json_object(src / "config.json")
    if release_config.get("model_type") != RELEASE_MODEL_TYPE:
        found = release_config.get("model_type")
        raise ConversionError(f"{src}/config.json: model_type {found!r} is not {RELEASE_MODEL_TYPE!r}")
    projector_type = release_config.get("mm_projector_type")
    if projector_type not in PROJECTOR_TYPES:
        raise ConversionError(
            f"{src}/config.json: mm_projector_type {projector_type!r} is not one of {sorted(PROJECTOR_TYPES)}"
        )
    _check_release_computation(src, release_config)
    if projector and not Path(projector).is_file():
        # Converting without the projector the user named would silently keep the checkpoint's own.
        raise ConversionError(f"--projector {projector}: no such file")
    _check_output(src, out)
    # The cheap checks before the weights, which may take minutes to read.
    layer = release_config.get("mm_vision_select_layer", -2)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise ConversionError(f"{src}/config.json: field 'mm_vision_select_layer': expected an integer, got "
                              f"{json.dumps(layer)}")
    tokenizer = load_tokenizer(src)
    add_image_token(tokenizer)
    generation_config = _generation_config(src)
    weights = read_weights(src)
    projector_file = Path(projector) if projector else src / PROJECTOR_BIN
    if projector_file.is_file():
        extra = read_tensor_file(projector_file)
        clash = [k for k in extra if k in weights and not torch.equal(extra[k], weights[k])]
        if clash:
            raise ConversionError(f"{projector_file} and the model weights hold different values for {sorted(clash)}")
        weights.update(extra)
    tied = bool(release_config.get("tie_word_embeddings", False))
    if tied:
        _tie_lm_head(weights, src)
    vision_config, tower_weights = _vision_state(weights, release_config, vision_tower, src)
    weights.update(tower_weights)
    try:
        config = SicogConfig(
            vision_config=vision_config,
            text_config=text_config_from_release(release_config),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            slice_comma_id=RELEASE_SEPARATORS[0],
            slice_newline_id=RELEASE_SEPARATORS[1],
            vision_feature_layer=layer,
            resampler_num_queries=PROJECTOR_TYPES[projector_type],
            scale_resolution=RELEASE_GEOMETRY["scale_resolution"],
            max_slice_nums=RELEASE_GEOMETRY["max_slice_nums"],
            inference_long_side=RELEASE_INFERENCE_LONG_SIDE,
            tie_word_embeddings=tied,
        )
    except (StrictDataclassError, ValueError, TypeError) as error:
        # The config classes' own checks (a field of the wrong type, sizes that do not fit): several lines around
        # the cause, which alone says what is wrong.
        raise ConversionError(f"{src}/config.json: {first_line(error.__cause__ or error)}") from None
    # What to-release would not write from the model's own settings, to be written back (the wrapper's
    # tokenizer_model_max_length, image_aspect_ratio, ...).
    computed = _written_fields(config, release_config.get("mm_vision_tower"))
    config.release_fields = {k: v for k, v in release_config.items() if k not in computed} or None
    with torch.device("meta"):
        model = SicogForConditionalGeneration(config)
    weights_source = f"{src} with {projector_file}" if projector else src
    state = from_release_state(weights, model.state_dict(), weights_source)
    model.load_state_dict(state, assign=True, strict=True)
    if generation_config is not None:
        model.generation_config = generation_config
    # After the release's own settings, which may name no stop or pad id (sampling values alone): generation would
    # then run past the end of every reply.
    _set_generation_ids(model, tokenizer)
    with _staged(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        share_weights_like_config(staging)
    return out


def _generation_config(src: Path) -> GenerationConfig | None:
    """The release's generation_config.json (None without one); :class:`ConversionError` naming it when unusable."""
    if not (src / "generation_config.json").is_file():
        return None
    try:
        return GenerationConfig.from_pretrained(src)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"{src}/generation_config.json: {first_line(error)}") from None


def release_text_fields(config: SicogConfig) -> dict:
    """The LLM's config.json fields as the published code's transformers (4.x) reads them: the RoPE base as
    ``rope_theta`` (with ``rope_scaling``) and the dtype as ``torch_dtype``. transformers 5 nests the base in
    ``rope_parameters``, which 4.x does not read: it would compute every rotary angle from its default base of
    10,000 instead of Qwen2's 1,000,000, a different model without a warning."""
    fields = config.text_config.to_dict()
    rope = dict(fields.pop("rope_parameters", None) or {})
    if "rope_theta" in rope:
        fields["rope_theta"] = rope.pop("rope_theta")
    fields["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    dtype = fields.pop("dtype", None) or config.to_dict().get("dtype")
    if dtype is not None:
        fields["torch_dtype"] = dtype
    return fields


def _projector_type(config: SicogConfig) -> str | None:
    """The published projector type of ``config``'s query count (None: none has it)."""
    return {queries: name for name, queries in PROJECTOR_TYPES.items()}.get(config.resampler_num_queries)


def _written_fields(config: SicogConfig, vision_tower_name: str | None) -> dict:
    """The config.json fields :func:`release_config_dict` computes from ``config``."""
    fields = release_text_fields(config)
    fields.update(
        model_type=RELEASE_MODEL_TYPE,
        architectures=["LlavaQwenForCausalLM"],
        mm_vision_tower=vision_tower_name,
        mm_projector_type=_projector_type(config),
        mm_hidden_size=config.vision_config.hidden_size,
        mm_vision_select_layer=config.vision_feature_layer,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="flat",
        model_mode="uhd_v1",
        use_mm_proj=True,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    return fields


def release_config_dict(config: SicogConfig, vision_tower_name: str) -> dict:
    """config.json of the published format for ``config`` (refuses settings the published code cannot compute),
    with the fields of the release it was converted from that it has no setting for (``release_fields``)."""
    problems = []
    text_type = config.text_config.model_type
    if text_type != RELEASE_TEXT_MODEL_TYPE:
        # The published code would build a Qwen2 LLM around these weights (missing tensors, other computation).
        problems.append(f"text_config.model_type={text_type!r} (needs {RELEASE_TEXT_MODEL_TYPE!r})")
    expected = {**RELEASE_RESAMPLER_SETTINGS, "image_layout": "release"}
    problems += [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in expected.items() if getattr(config, k) != v]
    geometry = {name: getattr(config, name) for name in RELEASE_GEOMETRY}
    problems += [f"{k}={v} (needs {RELEASE_GEOMETRY[k]})" for k, v in geometry.items() if v != RELEASE_GEOMETRY[k]]
    if (config.slice_comma_id, config.slice_newline_id) != RELEASE_SEPARATORS:
        separators = (config.slice_comma_id, config.slice_newline_id)
        problems.append(f"separator ids {separators} (needs {RELEASE_SEPARATORS})")
    if config.resampler_heads != config.text_config.hidden_size // 128:
        problems.append(f"{config.resampler_heads} resampler heads (needs hidden_size // 128)")
    if _projector_type(config) is None:
        choices = sorted(PROJECTOR_TYPES.values())
        problems.append(f"resampler_num_queries={config.resampler_num_queries} (needs one of {choices})")
    if problems:
        raise ConversionError("the published code cannot run this model: " + "; ".join(problems))
    return {**(config.release_fields or {}), **_written_fields(config, vision_tower_name)}


def legacy_merges(tokenizer_json: Path) -> None:
    """Write a BPE tokenizer's merges as ``"a b"`` strings, the only form the published stack's tokenizers (before
    0.20) reads: newer versions write pairs (``["a", "b"]``), which it refuses ("data did not match any variant of
    untagged enum ModelWrapper"), and read both. Merges whose parts hold a space have no string form; they stay."""
    if not tokenizer_json.is_file():
        return
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges or not all(isinstance(m, list) for m in merges):
        return
    if any(" " in part for merge in merges for part in merge):
        return
    model["merges"] = [" ".join(merge) for merge in merges]
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def legacy_special_tokens(tokenizer_config: Path) -> None:
    """Write a tokenizer's extra special tokens as ``additional_special_tokens``, the only name the published stack
    (transformers 4.40) reads: transformers 5 writes ``extra_special_tokens``, which 4.40 ignores, leaving the list
    empty, so that the published training code's ``im_start, im_end = tokenizer.additional_special_tokens_ids``
    fails. ``<image>``, which SICOG adds, is left out: that line unpacks the release's own two (Qwen2's
    ``<|im_start|>`` and ``<|im_end|>``), and the published code never meets that token. transformers 5 reads the
    old name as the new one."""
    data = read_json_object(tokenizer_config)
    extra = data.get("extra_special_tokens")
    if not extra:
        return  # none to name
    del data["extra_special_tokens"]
    data["additional_special_tokens"] = [token for token in extra if token != IMAGE_TOKEN]
    tokenizer_config.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_sicog_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a SICOG checkpoint directory (single file or shards), under the model's own names.

    The tower's weights are also accepted as ``vision_tower.vision_model.*``: transformers wrote CLIP's
    ``vision_model.`` prefix back when saving a model it had loaded under ZeRO-3 (SICOG training runs saved
    that way before the model's ``save_pretrained`` stopped it), and strips it again when loading.
    """
    try:
        state = read_weights(directory)
    except ConversionError as error:
        raise ConversionError(f"not a SICOG checkpoint: {error}") from None
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = TOWER_PREFIX + key[len(CLIP_PREFIXED) :] if key.startswith(CLIP_PREFIXED) else key
        if name in out:
            raise ConversionError(f"{directory}: holds both {name} and {CLIP_PREFIXED}{name[len(TOWER_PREFIX) :]}")
        out[name] = value
    return out


def _check_sicog_state(state: dict[str, torch.Tensor], config: SicogConfig, src: Path) -> None:
    """Refuse, in one error naming ``src``, weights that do not load into a model of ``config`` (what its
    ``config.json`` says): unknown, missing and mis-shaped tensors of the LLM, the resampler and the tower alike,
    which would otherwise be written into a release the published code cannot load."""
    with torch.device("meta"):
        model = SicogForConditionalGeneration(config)
    expected = model.state_dict()
    for tied in model.all_tied_weights_keys:  # transformers saves a tied weight once, under the name it is tied to
        if tied not in state:
            expected.pop(tied)
    unknown = [k for k in state if k not in expected]
    problems = state_problems({k: v for k, v in state.items() if k in expected}, expected, unknown)
    if problems:
        raise ConversionError(f"{src}: its weights do not fit its config.json: " + "; ".join(problems))


def sicog_to_release(src: str | os.PathLike, out: str | os.PathLike, *, vision_tower_name: str | None = None) -> Path:
    """Convert a SICOG checkpoint into the published format at ``out``.

    Writes ``config.json``, the weights (safetensors, sharded when large), ``mm_projector.bin`` (the
    projector alone, as stage 1 of the published scripts writes it), the tokenizer, the generation
    config, and the CLIP tower as its own checkpoint under ``vision_tower/`` (``mm_vision_tower``
    points there unless ``vision_tower_name`` names another copy, e.g. the hub id). ``out`` must be a new or
    empty folder outside ``src``; it appears only once the checkpoint is complete.
    """
    src, out = Path(src), Path(out)
    read_checkpoint_config(src)
    _check_output(src, out)
    config = SicogConfig.from_pretrained(src)
    # Where the tower will be once the staging folder is renamed into place.
    fields = release_config_dict(config, vision_tower_name or str(out.resolve() / "vision_tower"))
    sicog_state = read_sicog_weights(src)
    _check_sicog_state(sicog_state, config, src)  # before anything is written
    state = to_release_state(sicog_state)
    tower_weights = {k[len(TOWER_PREFIX) :]: v for k, v in sicog_state.items() if k.startswith(TOWER_PREFIX)}
    tokenizer = load_tokenizer(src)
    with _staged(out) as staging:
        save_torch_state_dict(state, staging, max_shard_size="5GB")
        torch.save({k: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}, staging / PROJECTOR_BIN)
        (staging / "config.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tower = CLIPVisionModel(config.vision_config)
        tower.load_state_dict(tower_weights, assign=True)  # the tensors themselves: the copy keeps their dtype
        # Under CLIP's vision_model. prefix, as openai's checkpoint and the published stack's CLIPVisionModel
        # (transformers 4) name them: its tower class finds no weight under transformers 5's bare names.
        tower.save_pretrained(staging / "vision_tower",
                              state_dict={"vision_model." + k: v for k, v in tower.state_dict().items()})
        size = config.vision_config.image_size
        CLIPImageProcessorPil(
            image_mean=list(config.image_mean), image_std=list(config.image_std), size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
        ).save_pretrained(staging / "vision_tower")
        # In the published stack's form: the chat template inside tokenizer_config.json (it reads no
        # chat_template.jinja), the merges as strings.
        tokenizer.save_pretrained(staging, save_jinja_files=False)
        legacy_merges(staging / "tokenizer.json")
        legacy_special_tokens(staging / "tokenizer_config.json")
        if (src / "generation_config.json").is_file():
            shutil.copyfile(src / "generation_config.json", staging / "generation_config.json")
        share_weights_like_config(staging)
    return out

