"""rlsignals: fused kernels that read a language model's own signals
(angles between hidden states at prefill, rank-1 structure of weight updates)
to make RL post-training cheaper.

The public ops are loaded on first use (``rlsignals.angle_stats`` imports torch
then), so ``import rlsignals`` and the command line's help start fast.
"""

from rlsignals._lazy import lazy_attributes

__version__ = "0.1.0"
_EXPORTS = {"AngleStats": "rlsignals.ops.angle", "BlockCosine": "rlsignals.ops.angle",
            "angle_stats": "rlsignals.ops.angle", "block_cosine": "rlsignals.ops.angle",
            "DeltaSVD": "rlsignals.ops.svd", "delta_svd": "rlsignals.ops.svd",
            "available_backends": "rlsignals.ops.backends"}
__all__ = [*_EXPORTS, "__version__"]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())
