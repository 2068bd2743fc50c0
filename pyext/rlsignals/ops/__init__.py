"""Public ops (backend dispatch) and their torch references.

``BACKENDS`` names the backends every op takes (besides "auto"); the ops themselves load
on first use, so reading the names here imports no torch.
"""

from rlsignals._lazy import lazy_attributes

BACKENDS = ("torch", "cpp", "triton", "cuda")
BACKEND_CHOICES = ("auto", *BACKENDS)
_EXPORTS = {"AngleStats": "rlsignals.ops.angle", "BlockCosine": "rlsignals.ops.angle",
            "angle_stats": "rlsignals.ops.angle", "block_cosine": "rlsignals.ops.angle",
            "DeltaSVD": "rlsignals.ops.svd", "delta_svd": "rlsignals.ops.svd"}
__all__ = ["BACKENDS", "BACKEND_CHOICES", *_EXPORTS]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())
