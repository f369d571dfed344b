"""Model registry: MLflow runs and versions, the ONNX on S3, aliases, promote and roll back.

Pure functions over an ``MlflowClient`` and a boto3 S3 client; see :mod:`components.registry.core`.
"""

from components.registry.compare import compare_runs, plot_runs
from components.registry.core import (
    CHALLENGER,
    CHAMPION,
    AliasLockTimeout,
    RegistryError,
    alias_lock,
    champion_metrics,
    champion_state,
    get_champion,
    list_versions,
    promote,
    register_model,
    restore_champion,
    rollback,
    s3_key,
    storage_uri,
    undo_move,
    version_info,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "AliasLockTimeout",
    "RegistryError",
    "alias_lock",
    "champion_metrics",
    "champion_state",
    "compare_runs",
    "get_champion",
    "list_versions",
    "plot_runs",
    "promote",
    "register_model",
    "restore_champion",
    "rollback",
    "s3_key",
    "storage_uri",
    "undo_move",
    "version_info",
]
