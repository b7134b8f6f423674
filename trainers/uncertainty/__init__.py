"""Uncertainty estimation: MC-dropout sampling, evidential quantities, per-image scores."""

from medloop.trainers.uncertainty.mc import MCSamples, enable_mc_dropout, mc_sample
from medloop.trainers.uncertainty.scoring import METHODS, BatchScores, score_batch

__all__ = ["MCSamples", "enable_mc_dropout", "mc_sample", "METHODS", "BatchScores", "score_batch"]
