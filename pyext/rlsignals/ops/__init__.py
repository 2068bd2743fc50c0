"""Public ops (backend dispatch) and their torch references."""

from rlsignals.ops.angle import AngleStats, BlockCosine, angle_stats, block_cosine

__all__ = ["AngleStats", "BlockCosine", "angle_stats", "block_cosine"]
