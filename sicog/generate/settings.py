"""How candidates are sampled: the settings, their defaults (written once, here) and what a checkpoint's
``generation_config.json`` supplies. No torch: the command line reads its defaults from here."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

# Records per generate call (each yields N sequences) and the run seed: with the sampling settings, they decide
# the bytes a run writes.
DEFAULT_BATCH_SIZE = 8
DEFAULT_SEED = 0
# Wider than this, an image is a line: slicing it gives views thousands of pixels long and nothing to see.
DEFAULT_MAX_ASPECT_RATIO = 100.0
# KV caches for decoding: HF's growing one, or one allocated once at full length (fixed shapes, so a
# compiled decoding step can replay as one CUDA graph).
CACHES = ("dynamic", "static")


@dataclass(frozen=True)
class SamplingSettings:
    """How candidates are drawn. Temperature 0 is greedy decoding (or beam search with ``num_beams`` > 1),
    whose single result is repeated ``num_candidates`` times."""

    num_candidates: int = 6
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    num_beams: int = 1
    max_new_tokens: int = 1200
    # How decoding runs, not what it draws: greedy outputs are the same on every path (tests/test_fast_decoding.py).
    cache: str = "dynamic"
    compile: bool = False
    # The prompt prefilled once per record, its KV cache copied to the N candidates (not prefilled N times).
    shared_prefill: bool = True
    # Other decoding settings of the checkpoint's generation_config.json (no_repeat_ngram_size, ...): generate
    # applies them, so they are recorded with the rest.
    checkpoint_settings: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.num_candidates < 1:
            problems.append(f"num_candidates must be at least 1, got {self.num_candidates}")
        # Written so that nan fails each check (every comparison with nan is false).
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more, got {self.top_k}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            problems.append(f"repetition_penalty must be above 0 (1 is off), got {self.repetition_penalty}")
        if self.num_beams < 1:
            problems.append(f"num_beams must be at least 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.cache not in CACHES:
            problems.append(f"cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if self.compile and self.cache != "static":
            problems.append("compiled decoding needs the static cache (cache='static'): a growing cache recompiles")
        if self.sampling and self.num_beams > 1 and self.num_candidates > self.num_beams:
            problems.append(
                f"beam sampling returns at most num_beams sequences: {self.num_candidates} candidates need "
                f"num_beams >= {self.num_candidates} (or num_beams 1 for independent samples)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def sampling(self) -> bool:
        """Whether candidates are random samples (temperature above 0)."""
        return self.temperature > 0

    @property
    def sequences_per_record(self) -> int:
        """Sequences ``generate`` returns per record (1 for greedy: the copies are free)."""
        return self.num_candidates if self.sampling else 1

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``model.generate``."""
        # All passed explicitly: the values recorded in each record are then the ones applied.
        kwargs = {"do_sample": self.sampling, "num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                  "num_return_sequences": self.sequences_per_record, "repetition_penalty": self.repetition_penalty}
        if self.sampling:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.cache == "static":
            # One cache for every batch of a size: compiled steps replay their CUDA graphs at its addresses.
            kwargs.update(cache_implementation="static", keep_static_cache=True)
        # generate() compiles decoding by itself on a GPU with a static cache; CPUs decode uncompiled unless asked.
        kwargs["disable_compile"] = not self.compile
        kwargs["shared_prefill"] = self.shared_prefill
        if self.compile:
            from transformers import CompileConfig

            # One graph per decoding step: a break would cut the CUDA graph that removes the per-step overhead.
            kwargs["compile_config"] = CompileConfig(fullgraph=True)
        return kwargs

    def metadata(self) -> dict:
        """The sampling parameters as written into each record's ``generation`` field."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repetition_penalty": self.repetition_penalty, "num_beams": self.num_beams,
                "max_new_tokens": self.max_new_tokens, "other_settings": dict(self.checkpoint_settings)}


# Settings a checkpoint's generation_config.json may supply (Qwen2-7B-Instruct's: 0.7, 0.8, 20, 1.05).
CHECKPOINT_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")
# Keys of a generation_config.json that do not change which tokens are drawn (token ids, what is returned,
# caching, bookkeeping), or that every run passes to generate itself, so that the checkpoint's value never applies.
NOT_OTHER_SETTINGS = frozenset({
    *CHECKPOINT_SAMPLING_FIELDS, "do_sample", "num_beams", "max_new_tokens", "max_length", "num_return_sequences",
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate", "use_cache",
    "cache_implementation", "compile_config", "disable_compile", "transformers_version", "_from_model_config",
})


def _saved_generation_config(model_dir: str | os.PathLike) -> dict:
    """What the checkpoint's ``generation_config.json`` sets explicitly (none: empty)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir).to_diff_dict()
    except (OSError, ValueError, TypeError) as err:  # not JSON (a cut copy), or not a JSON object
        raise ValueError(f"{path}: cannot be read ({str(err).splitlines()[0]}); repair or delete it") from None


def resolve_sampling(model_dir: str | os.PathLike, **given) -> SamplingSettings:
    """Sampling settings: each value given (not None) wins, then the checkpoint's, then the default; the
    checkpoint's other decoding settings come along as ``checkpoint_settings``."""
    saved = _saved_generation_config(model_dir)
    sampling = {name: saved[name] for name in CHECKPOINT_SAMPLING_FIELDS if saved.get(name) is not None}
    for name, value in sampling.items():
        if isinstance(value, bool) or not isinstance(value, int if name == "top_k" else (int, float)):
            raise ValueError(f"{Path(model_dir) / 'generation_config.json'}: {name} is {value!r}, not a number")
    values = {**sampling, **{k: v for k, v in given.items() if v is not None}}
    known = {f.name for f in fields(SamplingSettings)}
    other = {k: v for k, v in sorted(saved.items()) if k not in NOT_OTHER_SETTINGS}
    return SamplingSettings(**{k: v for k, v in values.items() if k in known}, checkpoint_settings=other)
