"""`sicog convert`: checkpoints in the published LLaVA format <-> SICOG checkpoints."""
