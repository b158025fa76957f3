"""The registered model as MLflow's generic pyfunc: ``mlflow.pyfunc.load_model("models:/...")``
rebuilds a :class:`~bgwsol.serving.localizer.Localizer` from the checkpoint file logged with it.

The registry (:mod:`bgwsol.tracking.model_registry`) names this module as the model's
``loader_module`` instead of importing it: serving depends on tracking, not the other way.
``predict`` takes a DataFrame with an ``image`` column (file paths or encoded bytes) and returns
class, class name, score and box (inclusive x0 y0 x1 y1 pixels of the image) per image.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from bgwsol.checkpoint import CHECKPOINT_FILE
from bgwsol.serving.localizer import Localizer


class PyfuncLocalizer:
    """What ``mlflow.pyfunc.load_model`` returns the predictions of (MLflow's ``loader_module`` protocol)."""

    def __init__(self, localizer: Localizer):
        self.localizer = localizer

    def predict(self, model_input, params=None):  # noqa: ARG002 - MLflow's signature
        import pandas as pd

        rows = []
        for item in model_input["image"]:
            image = Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)
            r = self.localizer(image)
            rows.append({"label": r.label, "class_name": r.class_name, "score": r.score, "box": list(r.box)})
        return pd.DataFrame(rows)


def _load_pyfunc(data_path: str) -> PyfuncLocalizer:
    """MLflow's entry point: ``data_path`` is the logged checkpoint file (or a folder holding it)."""
    path = Path(data_path)
    if path.is_dir():
        path = next(iter(sorted(path.rglob(CHECKPOINT_FILE))))
    return PyfuncLocalizer(Localizer.from_checkpoint(path))
