"""The dataset manifest: one typed reader, one behaviour for a missing or broken manifest, for every caller."""

from __future__ import annotations

import json

import pytest

from components.data import DatasetError, import_dataset
from components.data.manifest import MANIFEST, SCHEMA, Manifest, read_manifest


def test_read_manifest_types_what_the_import_wrote(small_export, tmp_path):
    written = import_dataset(small_export, tmp_path / "ds")
    read = read_manifest(tmp_path / "ds")
    assert isinstance(read, Manifest) and read == written
    assert read.kind == "dataset" and read.parent_id and read.splits == ["train", "val"]
    # The JSON keeps exactly the keys of its kind.
    on_disk = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert on_disk == read.to_dict()
    assert "ignored_labels" not in on_disk and "parent_id" in on_disk


def test_a_missing_manifest_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(DatasetError, match="no manifest.json") as e:
        read_manifest(tmp_path)
    assert e.value.file == str(tmp_path / MANIFEST)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON list, not an object"),
        (json.dumps({"schema": "other/1"}), "unexpected manifest schema"),
        (json.dumps({"schema": SCHEMA, "kind": "model"}), "field 'kind' is 'model'"),
        (json.dumps({"schema": SCHEMA, "dataset_id": 7}), "field 'dataset_id' is not a JSON string"),
        (
            json.dumps(
                {
                    "schema": SCHEMA,
                    "kind": "dataset",
                    "dataset_id": "x",
                    "classes": {},
                    "files": {},
                    "items": [],
                    "counts": {},
                }
            ),
            "field 'classes' is not a JSON list",
        ),
    ],
)
def test_a_broken_manifest_is_an_error_naming_the_file_and_field(tmp_path, content, message):
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(DatasetError, match=message) as e:
        read_manifest(tmp_path)
    assert e.value.file == str(tmp_path / MANIFEST)


def test_a_minimal_hand_written_manifest_still_reads(tmp_path):
    """The minimal dataset layout (schema and classes, as golden-image folders have) reads as before."""
    (tmp_path / MANIFEST).write_text(json.dumps({"schema": SCHEMA, "classes": ["scratch", "bent"]}))
    m = read_manifest(tmp_path)
    assert (m.kind, m.classes, m.dataset_id, m.items) == ("dataset", ["scratch", "bent"], "", [])


def test_evaluation_refuses_a_dataset_without_a_manifest_before_loading_the_model(tmp_path):
    """The evaluator used to record an empty dataset id here; now every reader says the same thing."""
    from components.model import evaluate_onnx

    (tmp_path / "images" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no manifest.json") as e:
        evaluate_onnx(tmp_path / "no-such-model.onnx", tmp_path)
    assert e.value.file == str(tmp_path / MANIFEST)


def test_the_champion_evaluation_refuses_a_dataset_without_a_manifest(tmp_path):
    from components.model.champion import champion_metrics_on

    with pytest.raises(DatasetError, match="no manifest.json"):
        champion_metrics_on(tmp_path, mlflow_client=None, s3_client=None, model_name="m")
