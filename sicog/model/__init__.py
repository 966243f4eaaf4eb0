"""The SICOG model: LLaVA-UHD slicing, CLIP vision tower, spatially constrained resampler, causal LLM."""
