"""Registration of the SICOG classes with transformers' Auto classes, done when those load.

Each SICOG module registers its class when it is imported (``configuration``: ``AutoConfig``;
``modeling``: ``AutoModelForImageTextToText``, which ``pipeline("image-text-to-text")`` uses;
``processing``: ``AutoProcessor``). ``import sicog`` calls :func:`register_on_import`, which imports
neither torch nor transformers: it arranges for each of those modules to be imported as soon as
transformers' module for the matching Auto class is (at once if it already is). So ``import sicog``
then ``AutoModelForImageTextToText.from_pretrained(checkpoint)`` works in either import order, and a
program that never touches the Auto classes pays nothing.
"""

from __future__ import annotations

import importlib
import sys
from functools import partial

import wrapt

HOOKS = {
    "transformers.models.auto.configuration_auto": "configuration",
    "transformers.models.auto.modeling_auto": "modeling",
    "transformers.models.auto.processing_auto": "processing",
}


def _import(name: str, _loaded_module) -> None:
    # A module already in sys.modules has registered itself or will at the end of its own import
    # (a transformers import inside it is what triggered this hook).
    if name not in sys.modules:
        importlib.import_module(name)


def register_on_import() -> None:
    """Import (so register) each SICOG module when transformers' module of its Auto class is imported."""
    for transformers_module, own in HOOKS.items():
        wrapt.register_post_import_hook(partial(_import, f"{__package__}.{own}"), transformers_module)
