"""Evaluation: the built-in benchmark runner (``sicog eval``, :func:`sicog.eval.runner.evaluate`) for
VLMEvalKit-style multiple-choice and yes/no TSVs, the project's answer extractor, and adapters that
plug a SICOG checkpoint into VLMEvalKit and lmms-eval (docs/evaluation.md)."""
