"""Dynamic transformers: the static ViT anchors and their token-sparse, early-exit and
mixture-of-experts variants."""
from .vit import VisionTransformer, deit_tiny_patch16_224, vit_cifar

__all__ = ["VisionTransformer", "deit_tiny_patch16_224", "vit_cifar"]
from .dynamic_vit import DynamicViT, default_prune_before, dynamic_deit_tiny_patch16_224, dynamic_vit_cifar
__all__ += ["DynamicViT", "default_prune_before", "dynamic_deit_tiny_patch16_224", "dynamic_vit_cifar"]
from .exit_vit import ExitViT, TokenExitHead, exit_deit_tiny_patch16_224, exit_vit_cifar
from .moe_vit import MoEVisionTransformer, moe_vit_cifar
__all__ += ["ExitViT", "MoEVisionTransformer", "TokenExitHead", "exit_deit_tiny_patch16_224", "exit_vit_cifar",
            "moe_vit_cifar"]
from .evit import EViT, evit_cifar, evit_deit_tiny_patch16_224
from .avit import AViT, avit_cifar, avit_deit_tiny_patch16_224
__all__ += ["AViT", "EViT", "avit_cifar", "avit_deit_tiny_patch16_224", "evit_cifar", "evit_deit_tiny_patch16_224"]

TOKEN_PRUNING = (DynamicViT, EViT)
"""Token-pruning transformers: `forward(x, policy=TokenPolicy(...))`; a keep ratio gives every
sample the same token count (and cost), a threshold a count per sample."""
__all__ += ["TOKEN_PRUNING"]
