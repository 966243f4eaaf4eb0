"""The placeholder text that marks an image in a conversation (one token id in every SICOG tokenizer)."""

IMAGE_TOKEN = "<image>"
