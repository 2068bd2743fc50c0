"""The rank-1 chain of RL weight updates (AlphaRL).

- trajectory.py: the store of per-checkpoint top singular triplets;
- track.py: ``track_rank1`` over a folder of checkpoints (``rlsignals rank1``);
- alpharl.py: the AlphaRL step (sign alignment, PLS fit, inversion);
- extrapolate.py: extrapolated and rank-1 checkpoints
  (``rlsignals extrapolate``, ``rlsignals rank1-model``).
"""
