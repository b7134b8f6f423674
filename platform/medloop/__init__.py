"""medloop: self-training rounds for joint medical image classification + segmentation.

One import namespace built from four folders (see pyproject ``package-dir``):
``platform/medloop`` (this package), ``trainers/`` (``medloop.trainers``),
``labeling/`` (``medloop.labeling``) and ``dashboard/`` (``medloop.dashboard``).
"""

__version__ = "0.1.0"
