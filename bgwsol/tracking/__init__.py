"""MLflow: run logging, the model registry and a local tracking server."""
