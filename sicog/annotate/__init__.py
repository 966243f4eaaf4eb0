"""Stage-0 training-data annotation: Chain-of-Description captions through an OpenAI-compatible
chat API (``cod``) and re-templating of LLaVA-CoT tagged answers into the 4-step format (``cot``).

Imports only :mod:`sicog.data` and libraries, never the model code.
"""
