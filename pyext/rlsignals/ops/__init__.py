"""Public ops (backend dispatch) and their torch references."""

from rlsignals.ops.angle import AngleStats, BlockCosine, angle_stats, block_cosine
from rlsignals.ops.svd import DeltaSVD, delta_svd

__all__ = ["AngleStats", "BlockCosine", "DeltaSVD", "angle_stats", "block_cosine", "delta_svd"]
