"""The toy world: procedural images with ground truth, every SICOG dataset, a tiny tokenizer and scorers.

`sicog toy build --out DIR` writes the whole world; :mod:`sicog.toy.score` scores captions and answers
against its ground truth.
"""
