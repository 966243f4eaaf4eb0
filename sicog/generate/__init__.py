"""Candidate generation: N sampled answers per record (captions or CoT reasoning), with optional image
corruptions, batched, sharded over torchrun ranks and resumable (``sicog generate``; docs/generation.md)."""
