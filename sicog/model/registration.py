"""Registration of the SICOG classes with transformers' Auto classes, done when those load.

Each SICOG module registers its class when it is imported (``configuration``: ``AutoConfig``;
``modeling``: ``AutoModelForImageTextToText``, which ``pipeline("image-text-to-text")`` uses;
``processing``: ``AutoProcessor``). ``import sicog`` calls :func:`register_on_import`, which imports
neither torch nor transformers: it arranges for each of those modules to be imported as soon as
transformers' module for the matching Auto class is (at once if it already is). So ``import sicog``
then ``AutoModelForImageTextToText.from_pretrained(checkpoint)`` works in either import order, and a
program that never touches the Auto classes pays nothing.

The torch-free parts of SICOG also run from a checkout in environments that are not SICOG's, such as
NV-Embed-v2's (``python -m sicog.curate.embed_file``, transformers 4.42, no ``wrapt``). There nothing is
registered: without ``wrapt`` no hook is set, and a hook that finds a transformers older than 5 (whose
API the SICOG modules need) does not import them.
"""

from __future__ import annotations

import importlib
import sys
from functools import partial

HOOKS = {
    "transformers.models.auto.configuration_auto": "configuration",
    "transformers.models.auto.modeling_auto": "modeling",
    "transformers.models.auto.processing_auto": "processing",
}
MIN_TRANSFORMERS_MAJOR = 5


def _supported_transformers() -> bool:
    """Whether the transformers being imported is one the SICOG modules work with (5 or newer)."""
    # Read from the module, not the package metadata: a hook runs only once transformers is importing.
    version = getattr(sys.modules.get("transformers"), "__version__", "0")
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) >= MIN_TRANSFORMERS_MAJOR


def _import(name: str, _loaded_module: object) -> None:
    # A module already in sys.modules has registered itself or will at the end of its own import
    # (a transformers import inside it is what triggered this hook).
    if name not in sys.modules and _supported_transformers():
        importlib.import_module(name)


def register_on_import() -> None:
    """Import (so register) each SICOG module when transformers' module of its Auto class is imported.

    Does nothing where ``wrapt`` is not installed (SICOG's own installation always has it).
    """
    try:
        import wrapt
    except ImportError:
        return
    for transformers_module, own in HOOKS.items():
        wrapt.register_post_import_hook(partial(_import, f"{__package__}.{own}"), transformers_module)
