"""Log a trained checkpoint to MLflow as a pyfunc, register it, and move the ``champion`` alias on improvement.

The logged model is our own module, not an exported graph: the pyfunc holds the run's
checkpoint file (:mod:`bgwsol.training.engine`'s layout, without optimizer state, with the
thresholds chosen on validation) as an artifact and rebuilds
:class:`~bgwsol.serving.localizer.Localizer` from it. ``predict`` takes a DataFrame with an ``image``
column (file paths or encoded bytes) and returns class, class name, score and box per image.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHAMPION = "champion"
METRIC_TAG = "val_metric"


def _python_model_class():
    import mlflow.pyfunc

    class BgwsolLocalizer(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc around :class:`bgwsol.serving.localizer.Localizer`."""

        def load_context(self, context) -> None:
            from bgwsol.serving.localizer import Localizer

            self.localizer = Localizer.from_checkpoint(context.artifacts["checkpoint"])

        def predict(self, context, model_input, params=None):
            import pandas as pd
            from PIL import Image

            rows = []
            for item in model_input["image"]:
                image = Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)
                r = self.localizer(image)
                rows.append({"label": r.label, "class_name": r.class_name, "score": r.score, "box": list(r.box)})
            return pd.DataFrame(rows)

    return BgwsolLocalizer


@dataclass
class Registration:
    model_uri: str
    name: str
    version: int
    champion: bool
    metric: float


def log_and_register(state: dict, *, tracking_uri: str, run_id: str, name: str, metric: float,
                     taus: dict[int, float]) -> Registration:
    """Log ``state`` (a training checkpoint) with its operating thresholds ``taus`` (IoU percent
    -> τ, chosen on validation) under MLflow run ``run_id``, register it as ``name`` and point
    ``champion`` at it only if ``metric`` (validation, higher is better) beats the current
    champion's."""
    import mlflow
    from mlflow import MlflowClient

    from bgwsol.checkpoint import inference_state, save_checkpoint

    mlflow.set_tracking_uri(tracking_uri)
    tau = taus[50]
    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(inference_state(state, taus), d)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=_python_model_class()(),
                                           artifacts={"checkpoint": str(path)},
                                           pip_requirements=["torch", "torchvision", "pillow", "pandas"])
    client = MlflowClient(tracking_uri)
    version = mlflow.register_model(info.model_uri, name, tags={METRIC_TAG: str(metric), "tau": str(tau)})
    champion = should_promote(client, name, metric)
    if champion:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    log.info("registered %s version %s (%s %.2f)%s", name, version.version, METRIC_TAG, metric,
             " -> champion" if champion else "")
    return Registration(info.model_uri, name, int(version.version), champion, metric)


def should_promote(client, name: str, metric: float) -> bool:
    """True if ``name`` has no champion yet or ``metric`` beats the champion's recorded metric."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return True
    return metric > float(current.tags.get(METRIC_TAG, "-inf"))
