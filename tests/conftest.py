import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small synthetic ILSVRC + CUB + background set (3 classes)."""
    from bgwsol.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(seed=3, num_classes=3, train_per_class=14, test_per_class=4, num_background=12,
                          cub_train_per_class=3, cub_test_per_class=2, min_side=64, max_side=80)
    return generate(tmp_path_factory.mktemp("syn"), cfg, show_progress=False), cfg
