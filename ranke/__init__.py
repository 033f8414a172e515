"""RankE: policy (GRPO) + VQ-decoder co-evolution for discrete autoregressive text-to-image models."""

__version__ = "0.1.0"
