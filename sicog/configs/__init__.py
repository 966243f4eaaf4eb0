"""Package data: DeepSpeed configs and presets."""
