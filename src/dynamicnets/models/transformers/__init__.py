"""Dynamic transformers: the static ViT anchors and their token-sparse, early-exit and
mixture-of-experts variants."""
from .vit import VisionTransformer, deit_tiny_patch16_224, vit_cifar

__all__ = ["VisionTransformer", "deit_tiny_patch16_224", "vit_cifar"]
