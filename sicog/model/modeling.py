"""`SicogForConditionalGeneration`: CLIP views -> resampler -> placeholder tokens of a causal LLM."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
    StaticCache,
)
from transformers import initialization as init
from transformers.generation import LogitsProcessorList, RepetitionPenaltyLogitsProcessor
from transformers.generation.utils import GenerateOutput
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.modeling_outputs import CausalLMOutputWithPast

from .attention import grouped_decoding
from .configuration import SicogConfig
from .layout import order_slice_features
from .resampler import Resampler, sincos_2d
from .vision import directly_read_parameters, group_by_size, layers_used, patch_features, tower_body

# What transformers warns when logits processors run without prompt ids (see generate()).
logger = logging.getLogger(__name__)
EMBEDS_ONLY_WARNING = r"Passing `\w+` with `inputs_embeds` and without `input_ids`"


class ImageTokenMismatchError(ValueError):
    """The number of image placeholder tokens differs from the number of image features."""


class SicogPreTrainedModel(PreTrainedModel):
    """Shared settings of SICOG models (attention backends, checkpointing, weight init)."""

    config: SicogConfig
    config_class = SicogConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "Resampler"]

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args, save_original_format: bool = False, **kwargs
    ) -> None:
        """transformers' ``save_pretrained``, writing the weights under their module names (``vision_tower.*``).

        transformers' default (``save_original_format=True``) reverts the renamings it applied while loading,
        and which it reverts depends on how the model was loaded: after a ZeRO-3 ``from_pretrained`` it keeps
        every registered renaming, used or not, so CLIP's dropped ``vision_model.`` prefix came back
        (``vision_tower.vision_model.*``), while every other load and save wrote ``vision_tower.*``. A SICOG
        checkpoint has one naming, whatever wrote it; loading still accepts both.
        """
        super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Resampler):
            init.trunc_normal_(module.query, std=0.02)
            init.copy_(module.query_pos, sincos_2d(module.grid, module.grid, module.width))
            if module.pooling == "average":
                side = module.grid * module.cell_bins
                init.copy_(module.cell_key_pos, sincos_2d(side, side, module.width))


class SicogForConditionalGeneration(SicogPreTrainedModel, GenerationMixin):
    """LLaVA-UHD style multimodal LLM.

    Images arrive as ``pixel_values``: a list, in the order their placeholders appear in ``input_ids``,
    of ``(rows, cols, 3, h, w)`` slice grids and ``(3, H, W)`` single views (each sliced image gives its
    grid, then its global view). Each view becomes ``config.resampler_num_queries`` embeddings that
    replace ``image_token_id`` positions, a grid's in the order of ``config.image_layout``; the
    separators are ordinary text tokens written by the processor.
    """

    # Set for training by sicog.train.fast_paths: a fused linear cross-entropy ``(weight, hidden, targets) ->
    # summed loss`` that never materialises the logits. None: the LLM computes logits and its own loss.
    fused_loss = None

    def __init__(
        self, config: SicogConfig, vision_tower: nn.Module | None = None, language_model: nn.Module | None = None
    ) -> None:
        """Build from ``config``; pretrained ``vision_tower`` / ``language_model`` modules may be passed in."""
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.resampler = Resampler(
            vision_width=config.vision_config.hidden_size,
            width=config.text_config.hidden_size,
            num_queries=config.resampler_num_queries,
            num_heads=config.resampler_heads,
            attention=config.resampler_attention,
            pooling=config.resampler_pooling,
            cell_bins=config.resampler_cell_bins,
        )
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        self.post_init()
        self.set_trainable(vision=True, resampler=True, llm=True)
        if is_deepspeed_zero3_enabled():
            # Imported by name: deepspeed is a training extra, and this file, saved with a checkpoint as
            # remote code, must load where it is not installed (transformers checks plain imports).
            deepspeed = importlib.import_module("deepspeed")

            for parameter in directly_read_parameters(self.vision_tower):
                deepspeed.zero.register_external_parameter(self, parameter)

    def unused_vision_modules(self) -> list[nn.Module]:
        """Vision layers after ``vision_feature_layer`` and the final norm: never run.

        They are kept so pretrained CLIP checkpoints load unchanged, and frozen so that DDP and
        DeepSpeed never wait for gradients that cannot arrive.
        """
        tower = tower_body(self.vision_tower)
        used = layers_used(self.vision_tower, self.config.vision_feature_layer)
        return list(tower.encoder.layers[used:]) + [tower.post_layernorm]

    def set_trainable(self, *, vision: bool, resampler: bool, llm: bool) -> None:
        """Choose which parts learn; the unused tail of the vision tower never does."""
        self.vision_tower.requires_grad_(vision)
        self.resampler.requires_grad_(resampler)
        self.language_model.requires_grad_(llm)
        for module in self.unused_vision_modules():
            module.requires_grad_(False)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def tokens_per_view(self) -> int:
        """Embeddings produced for every slice or global view."""
        return self.config.resampler_num_queries

    def get_image_features(self, pixel_values: list[torch.Tensor]) -> torch.Tensor:
        """Embeddings ``(num_views * tokens_per_view, hidden)`` for ``pixel_values``, in sequence order."""
        views, grids = flatten_views(pixel_values)
        outputs: list[torch.Tensor | None] = [None] * len(views)
        for indices in group_by_size(views).values():
            tokens = self._encode_views(torch.stack([views[i] for i in indices]))
            for row, index in enumerate(indices):
                outputs[index] = tokens[row]
        ordered, start = [], 0
        for grid in grids:
            if grid is None:
                ordered.append(outputs[start])
                start += 1
            else:
                count = grid[0] * grid[1]
                slices = torch.stack(outputs[start : start + count])
                ordered.append(order_slice_features(slices, grid, self.config.image_layout))
                start += count
        return torch.cat(ordered, dim=0)

    def _encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(device=self.device, dtype=self.vision_tower.dtype)
        features = patch_features(self.vision_tower, pixels, self.config.vision_feature_layer, self.config.patch_size)
        return self.resampler(features)

    def _vision_passes(self, own: int) -> int:
        """Vision passes this step must make.

        While training, at least one (DDP expects gradients for the vision path, also on text-only
        batches). Under ZeRO-3 every rank makes as many as the busiest rank, because each pass
        gathers the partitioned weights collectively and the ranks must stay in lockstep.
        """
        passes = max(own, 1) if self.training else own
        zero3 = hasattr(next(self.vision_tower.parameters()), "ds_id")
        if self.training and zero3 and torch.distributed.is_initialized():
            count = torch.tensor([passes], device=self.device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
            passes = int(count.item())
        return passes

    def embed_inputs(self, input_ids: torch.LongTensor, pixel_values: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Text embeddings with every image placeholder replaced by its image feature (checked count)."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None and not self.training and torch.compiler.is_compiling():
            # A compiled decoding step (static cache): its tokens are sampled, and generate() suppresses the
            # placeholder id, so there is nothing to count; the count would read a GPU value and split the graph.
            return embeds
        mask = input_ids == self.config.image_token_id
        n_placeholders = int(mask.sum())
        views, _ = flatten_views(list(pixel_values) if pixel_values is not None else [])
        n_features = len(views) * self.tokens_per_view
        if n_placeholders != n_features:
            raise ImageTokenMismatchError(
                f"input_ids hold {n_placeholders} image placeholder tokens but the images give {n_features} "
                f"features ({len(views)} views x {self.tokens_per_view}); build inputs with SicogProcessor"
            )
        own_passes = len(group_by_size(views))
        extra = self._vision_passes(own_passes) - own_passes  # agreed before any pass starts
        if views:
            features = self.get_image_features(pixel_values).to(embeds.dtype)
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), features)
        if extra > 0:
            # A pass whose result is multiplied by zero: it keeps the ranks in step and changes nothing.
            dummy = torch.zeros(extra, 3, self.config.patch_size, self.config.patch_size)
            unused = sum(self._encode_views(dummy[i : i + 1]).sum() for i in range(extra))
            embeds = embeds + 0.0 * unused.to(embeds.dtype)
        return embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        """Causal-LM forward; extra keyword arguments (cache, loss options) go to the LLM.

        ``logits_to_keep`` (declared so that ``generate()`` passes it) limits the vocabulary projection
        to the last positions: prefill then never materialises logits for the whole prompt. ``position_ids``
        is declared for the same reason: ``generate()`` then numbers a left-padded row's positions from its
        first real token, as the published forward (which declares it) had them.
        """
        kwargs["position_ids"] = position_ids
        if self.training:
            # A training step never reads a KV cache; building one costs memory, and its per-layer state makes
            # compiled layers (--compile_layers) recompile for every layer.
            kwargs.setdefault("use_cache", False)
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        elif pixel_values is not None:
            raise ValueError("pass pixel_values with input_ids, not with precomputed inputs_embeds")
        if labels is not None and self.fused_loss is not None:
            return self._fused_loss_forward(inputs_embeds, attention_mask, labels, **kwargs)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _fused_loss_forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                            labels: torch.LongTensor, num_items_in_batch: torch.Tensor | int | None = None,
                            **kwargs) -> CausalLMOutputWithPast:
        """The loss of the LLM's own loss function (next-token targets, -100 ignored; summed over
        ``num_items_in_batch`` when the trainer gives it, else the mean), from hidden states and the head's
        weight: no logits are returned."""
        hidden = self.language_model.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                   **kwargs).last_hidden_state
        targets = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1).to(hidden.device)
        total = self.fused_loss(self.get_output_embeddings().weight, hidden.reshape(-1, hidden.shape[-1]), targets)
        count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
        return CausalLMOutputWithPast(loss=total / (count.to(total.device) if torch.is_tensor(count) else count))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor | GenerateOutput:
        """``GenerationMixin.generate`` with images encoded once, before decoding.

        The prompt embeddings (images merged) are computed a single time and reused for every
        ``num_return_sequences`` sample, and so is the prompt's KV cache (``shared_prefill``, default True: see
        :meth:`_prefill_once`); decoding then runs on the KV cache. As in the published
        ``LlavaQwenForCausalLM.generate``, only the embeddings go to ``GenerationMixin.generate``, so the
        logits processors (``repetition_penalty``, ``no_repeat_ngram_size``, ...) see the generated tokens
        alone, never the prompt. The prompt ids are then put back in front: the result is prompt + new ids
        (``sequences`` of a returned dict), the transformers convention. Without ``attention_mask`` every
        prompt position is attended to. Decoding steps read each key/value head of the cache once, compiled or
        not (:func:`.attention.grouped_decoding`). ``keep_static_cache`` (default False): the shared prefill's
        static cache is kept on the model for the next call of the same size (see :meth:`_empty_static_cache`).
        """
        with grouped_decoding(self.language_model.config):
            return self._generate(input_ids, pixel_values, attention_mask, **kwargs)

    def _generate(self, input_ids: torch.LongTensor | None, pixel_values: list[torch.Tensor] | None,
                  attention_mask: torch.Tensor | None, **kwargs) -> torch.LongTensor | GenerateOutput:
        """:meth:`generate`'s work, with the LLM on the attention it decodes with."""
        shared_prefill = kwargs.pop("shared_prefill", True)
        keep_static_cache = kwargs.pop("keep_static_cache", False)
        if input_ids is None and torch.is_tensor(kwargs.get("inputs")):  # generate(inputs=ids), as transformers takes
            input_ids = kwargs.pop("inputs")
        # A placeholder id must never be sampled: the next step would have no image feature for it. The ids the
        # call or its generation config already suppress stay suppressed.
        suppressed = kwargs.pop("suppress_tokens", None)
        if suppressed is None:
            suppressed = (kwargs.get("generation_config") or self.generation_config).suppress_tokens
        kwargs["suppress_tokens"] = sorted(set(suppressed or []) | {self.config.image_token_id})
        if input_ids is None or "inputs_embeds" in kwargs:
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        check_prompt_length(input_ids.shape[1], kwargs.get("generation_config") or self.generation_config, kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif input_ids.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
            # transformers looks for right padding in input_ids only, so it never sees it here.
            logger.warning(
                "A decoder-only architecture is being used, but right-padding was detected! For correct "
                "generation results, please set `padding_side='left'` when initializing the tokenizer."
            )
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        if shared_prefill:
            inputs_embeds, attention_mask = self._prefill_once(inputs_embeds, attention_mask, kwargs, keep_static_cache)
        if kwargs.get("streamer") is not None:
            # transformers hands a streamer the prompt first (TextStreamer prints it unless skip_prompt); with
            # embeddings alone it would only see the new tokens.
            kwargs["streamer"].put(input_ids.cpu())
        with warnings.catch_warnings():
            # transformers warns that the penalties then skip the prompt: that is the point.
            warnings.filterwarnings("ignore", message=EMBEDS_ONLY_WARNING, category=UserWarning)
            out = super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        return with_prompt_ids(out, input_ids)

    def _prefill_once(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, kwargs: dict,
                      keep_static_cache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt through the LLM once per prompt, not once per returned sequence.

        transformers copies each prompt ``num_return_sequences`` times and then prefills every copy: with
        N = 6 candidates, six times the prompt's compute (most of a candidate's cost at SICOG's prompt
        lengths). Here all but the last prompt position are prefilled once per prompt, the KV cache is
        copied N times (into the static cache when that is the one asked for; with ``keep_static_cache``, one kept
        between calls: see :meth:`_empty_static_cache`), and ``generate`` goes on from it with the copied embeddings:
        it computes only the last position, as it does when a cache is reused. Positions are numbered as
        transformers numbers them (from each row's first real token), so every copy sees the cache its own prefill
        would have built. ``kwargs`` (those of ``generate``) are updated in place; the embeddings and mask of the
        copies are returned. Left as transformers does it (nothing changed) for one sequence per prompt, beam
        search, a cache given by the caller, a cache implementation other than dynamic or static, chunked
        prefill, assisted decoding, or attentions or hidden states asked for (the prompt's are returned only
        when generate computes them).
        """
        # The settings as generate() will see them: the given config, the model's for what it leaves unset, the
        # keyword arguments over both, validated (greedy decoding asked for several sequences raises transformers'
        # own error here).
        config, _ = self._prepare_generation_config(
            kwargs.get("generation_config"), **{k: v for k, v in kwargs.items() if k != "generation_config"})
        copies = config.num_return_sequences or 1
        length = inputs_embeds.shape[1]
        if (copies == 1 or (config.num_beams or 1) > 1 or length < 2 or config.use_cache is False
                or config.cache_implementation not in (None, "dynamic", "static") or config.prefill_chunk_size
                # the prompt's attentions and hidden states are returned only when generate computes them
                or config.output_attentions or config.output_hidden_states
                or any(kwargs.get(name) is not None for name in ("cache", "past_key_values", "assistant_model"))):
            return inputs_embeds, attention_mask
        static = config.cache_implementation == "static"
        cache_argument = _cache_argument(type(self.language_model))
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        # For the static cache, every position is kept (a sliding-window layer of a configured cache keeps only its
        # window, and the static layers count what they are given).
        cache = DynamicCache() if static else DynamicCache(config=self.language_model.config)
        self.language_model.get_decoder()(inputs_embeds=inputs_embeds[:, :-1], attention_mask=attention_mask[:, :-1],
                                          position_ids=positions[:, :-1], use_cache=True, **{cache_argument: cache})
        if static:
            new_tokens = config.max_new_tokens if config.max_new_tokens is not None else config.max_length
            # Never shorter than an earlier call's (nor than max_cache_len): as transformers sizes its own, so
            # that compiled decoding is not compiled again for every prompt length.
            self._static_cache_length = max(length + new_tokens, config.max_cache_len or 0,
                                            getattr(self, "_static_cache_length", 0))
            filled = self._empty_static_cache(inputs_embeds.shape[0] * copies, cache.layers[0].keys, keep_static_cache)
            positions_filled = {"cache_position": torch.arange(length - 1, device=inputs_embeds.device)}
            for index, layer in enumerate(cache.layers):
                filled.update(layer.keys.repeat_interleave(copies, dim=0),
                              layer.values.repeat_interleave(copies, dim=0), index, positions_filled)
            cache = filled
        else:
            cache.batch_repeat_interleave(copies)
        # The copies are made here: generate is asked for one sequence per (copied) prompt.
        kwargs.update({cache_argument: cache, "num_return_sequences": 1, "cache_implementation": None})
        return inputs_embeds.repeat_interleave(copies, dim=0), attention_mask.repeat_interleave(copies, dim=0)

    def _empty_static_cache(self, rows: int, keys: torch.Tensor, keep: bool) -> StaticCache:
        """An empty static cache of ``rows`` sequences at the current length, for keys like ``keys``: a new one, as
        transformers makes for every call, or with ``keep`` the one kept from the previous such call, emptied, when
        it has that size, dtype and device.

        A compiled decoding step replays CUDA graphs recorded at the cache's addresses: a new cache for every batch
        may have them recorded again for every batch (and allocates the whole cache each time). Kept, the cache
        returned by one call (``past_key_values``) is emptied by the next, and two threads must not generate with
        one model at once: for a job that decodes batch after batch (``sicog generate``).
        """
        if not keep:
            return StaticCache(config=self.language_model.config, max_cache_len=self._static_cache_length)
        cache = getattr(self, "_static_cache", None)
        layer = cache.layers[0] if cache is not None else None
        if (layer is not None and layer.is_initialized and layer.max_cache_len == self._static_cache_length
                and layer.keys.shape[0] == rows and (layer.keys.dtype, layer.keys.device) == (keys.dtype, keys.device)):
            cache.reset()
            return cache
        self._static_cache = StaticCache(config=self.language_model.config, max_cache_len=self._static_cache_length)
        return self._static_cache

    def _get_logits_processor(
        self, generation_config: GenerationConfig, input_ids_seq_length: int | None = None, **kwargs
    ) -> LogitsProcessorList:
        """transformers' processors, with the repetition penalty on every generated token when decoding
        starts from embeddings alone.

        transformers skips each row's left padding (read from the attention mask) in the penalty; with no
        prompt ids, the ids it sees are generated tokens only, and skipping would leave a padded row's
        first tokens unpenalized, so a record's samples would depend on the batch it shares.
        """
        processors = super()._get_logits_processor(generation_config, input_ids_seq_length, **kwargs)
        if input_ids_seq_length == 0:
            for processor in processors:
                if isinstance(processor, RepetitionPenaltyLogitsProcessor):
                    processor.prompt_ignore_length = None
        return processors


@functools.cache
def _cache_argument(language_model: type) -> str:
    """The name under which ``language_model``'s forward takes a KV cache (transformers renamed it in 5.x)."""
    return "cache" if "cache" in inspect.signature(language_model.forward).parameters else "past_key_values"


def check_prompt_length(prompt_length: int, generation_config: GenerationConfig, kwargs: dict) -> None:
    """Raise as transformers does when ``max_length`` (the total length) leaves no room after the prompt.

    transformers checks it against the embeddings' empty ids, which gives a wrong message.
    """
    if kwargs.get("max_new_tokens", generation_config.max_new_tokens) is not None:
        return  # max_new_tokens decides, as in transformers
    max_length = kwargs.get("max_length", generation_config.max_length)
    if max_length is not None and prompt_length >= max_length:
        raise ValueError(
            f"Input length of input_ids is {prompt_length}, but `max_length` is set to {max_length}. "
            "Increase `max_length` or, better yet, set `max_new_tokens`."
        )


def with_prompt_ids(
    out: torch.LongTensor | GenerateOutput, input_ids: torch.LongTensor
) -> torch.LongTensor | GenerateOutput:
    """``out`` (new ids only, ``num_return_sequences`` rows per prompt) with each row's prompt ids in front."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    copies = sequences.shape[0] // input_ids.shape[0]
    full = torch.cat([input_ids.to(sequences.device).repeat_interleave(copies, dim=0), sequences], dim=1)
    if isinstance(out, torch.Tensor):
        return full
    out.sequences = full
    return out


def flatten_views(pixel_values: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int] | None]]:
    """Single ``(3, H, W)`` views in order, and per entry its slice grid ``(cols, rows)`` (None: a single view).

    Entries may come in one list per sample, as transformers' pipeline collates a batch: they are read in order.
    """
    views: list[torch.Tensor] = []
    grids: list[tuple[int, int] | None] = []
    for index, entry in enumerate(_in_order(pixel_values)):
        if entry.ndim == 5:
            rows, cols = int(entry.shape[0]), int(entry.shape[1])
            views += list(entry.reshape(rows * cols, *entry.shape[2:]))
            grids.append((cols, rows))
        elif entry.ndim == 3:
            views.append(entry)
            grids.append(None)
        else:
            raise ValueError(
                f"pixel_values entry {index} has shape {tuple(entry.shape)}; "
                "expected (3, H, W) or (rows, cols, 3, h, w)"
            )
    return views, grids


def _in_order(entries: list) -> list[torch.Tensor]:
    """``entries`` with nested lists and tuples opened, in order."""
    return [t for e in entries for t in (_in_order(e) if isinstance(e, (list, tuple)) else [e])]


if __name__.startswith("sicog."):  # copies saved with a checkpoint are found through its auto_map instead
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.register(SicogConfig, SicogForConditionalGeneration, exist_ok=True)
