"""medloop: self-training rounds for joint medical image classification + segmentation.

One import namespace built from four folders (see pyproject ``package-dir``):
``platform/medloop`` (this package), ``trainers/`` (``medloop.trainers``),
``labeling/`` (``medloop.labeling``) and ``dashboard/`` (``medloop.dashboard``).
"""

__version__ = "0.1.0"

import os as _os

# No outbound calls: MLflow 3 sends usage telemetry from every process that imports it unless this is
# set (before mlflow is imported); a user who wants it sets MLFLOW_DISABLE_TELEMETRY=false.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
