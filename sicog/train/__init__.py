"""Training stages 0, 1, 1.5, 2 (and DPO) on the HF Trainer, with DeepSpeed ZeRO-2/3."""
