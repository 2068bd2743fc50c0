"""rlsignals: fused kernels that read a language model's own signals
(angles between hidden states at prefill, rank-1 structure of weight updates)
to make RL post-training cheaper."""

from rlsignals.ops import AngleStats, BlockCosine, DeltaSVD, angle_stats, block_cosine, delta_svd
from rlsignals.ops.backends import available_backends

__version__ = "0.1.0"
__all__ = ["AngleStats", "BlockCosine", "DeltaSVD", "angle_stats", "available_backends", "block_cosine", "delta_svd",
           "__version__"]
