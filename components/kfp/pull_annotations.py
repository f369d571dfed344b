"""KFP step 1: CVAT export (folder, zip, ``s3://``) or a CVAT task/project -> normalized dataset."""

from typing import NamedTuple

from kfp.dsl import Dataset, Output


def pull_annotations(
    source: str,
    data_format: str,
    cvat_task_id: int,
    cvat_project_id: int,
    include_all_jobs: bool,
    source_version: str,
    raw_dataset: Output[Dataset],
    map_by_name: bool = True,
) -> NamedTuple("PullOutputs", [("dataset_id", str), ("images", int)]):
    """Pull annotations into ``raw_dataset`` (images, labels, manifest.json).

    Args:
        source: Export folder, ``.zip`` or ``s3://bucket/key``; may be empty for a CVAT pull.
        data_format: CVAT format name; empty to detect it (or the default CVAT export format).
        cvat_task_id: CVAT task to export (0: none). Needs ``CVAT_URL`` and credentials in env.
        cvat_project_id: CVAT project to export (0: none).
        include_all_jobs: Also take CVAT jobs that are not yet completed (by default only completed annotation
            jobs, any stage).
        source_version: Fingerprint of the source's content (only there so that a changed
            source changes this step's cache key; the step does not read it).
        raw_dataset: Output folder.
        map_by_name: Class ids follow label names (``scratch`` 0, ``bent`` 1) whatever the order or
            extra labels of the CVAT project; only a missing required class fails. False keeps the
            export's ids and refuses any other order.

    Returns:
        The manifest's dataset id and number of images.
    """
    from collections import namedtuple
    from pathlib import Path

    from components.data import pull_annotations as pull

    del source_version  # part of the cache key only
    s3_client = cvat_client = None
    if source.startswith("s3://"):
        from vinspect.settings import S3Settings

        s3_client = S3Settings.from_env().client()
    if cvat_task_id or cvat_project_id:
        from components.data.cvat_pull import make_client
        from vinspect.settings import CVATSettings

        cvat = CVATSettings.from_env()
        if not cvat.url:
            raise ValueError("a CVAT task or project was given but CVAT_URL is not set (CVAT Secret)")
        cvat_client = make_client(
            cvat.url,
            token=cvat.token.get_secret_value() if cvat.token else None,
            username=cvat.username,
            password=cvat.password.get_secret_value() if cvat.password else None,
            verify_ssl=None,
            host=cvat.host,
        )
    manifest = pull(
        source or None,
        Path(raw_dataset.path),
        fmt=data_format or None,
        s3_client=s3_client,
        cvat_client=cvat_client,
        task_id=cvat_task_id or None,
        project_id=cvat_project_id or None,
        include_all_jobs=include_all_jobs,
        map_by_name=map_by_name,
    )
    images = int(manifest.counts.get("images", {}).get("total", 0))
    raw_dataset.metadata["dataset_id"] = manifest.dataset_id
    raw_dataset.metadata["classes"] = list(manifest.classes)
    print(f"pulled {images} images, dataset id {manifest.dataset_id}")
    return namedtuple("PullOutputs", ["dataset_id", "images"])(manifest.dataset_id, images)
