"""Model registry: MLflow runs and versions, the ONNX on S3, aliases, promote and roll back.

Pure functions over an ``MlflowClient`` and a boto3 S3 client, one file per verb: registering in
:mod:`~components.registry.register`, promote / rollback / the alias lock in
:mod:`~components.registry.aliases`, reads in :mod:`~components.registry.queries`, the shared names
(aliases, tags, errors, the S3 layout) in :mod:`~components.registry.core`.
"""

from components.registry.aliases import (
    AliasMove,
    Promotion,
    Rollback,
    alias_lock,
    promote,
    restore_champion,
    rollback,
    undo_move,
)
from components.registry.compare import compare_runs, plot_runs
from components.registry.core import CHALLENGER, CHAMPION, AliasLockTimeout, RegistryError, s3_key, storage_uri
from components.registry.queries import champion_metrics, champion_state, get_champion, list_versions, version_info
from components.registry.register import Registration, register_model

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "AliasLockTimeout",
    "AliasMove",
    "Promotion",
    "Registration",
    "Rollback",
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
