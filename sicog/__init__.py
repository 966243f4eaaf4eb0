"""SICOG: Self-Improving Cognition for multimodal LLMs (arXiv 2503.12303)."""

__version__ = "0.1.0"

from sicog.model.registration import register_on_import

register_on_import()
