"""Precision variants: INT8 calibration, the variant index, per-variant evaluation, the gate's choice."""

from __future__ import annotations

import json

import pytest

from components.model.gate import choose_variant

# ------------------------------------------------------------------ the choice (pure, known figures)

FIGURES = {
    "onnx": {"map50_95": 0.600, "latency_ms": 60.0, "engine": "onnxruntime f32"},
    "fp32": {"map50_95": 0.600, "latency_ms": 40.0, "engine": "openvino f32"},
    "auto": {"map50_95": 0.595, "latency_ms": 23.0, "engine": "openvino bf16"},
    "int8": {"map50_95": 0.580, "latency_ms": 15.0, "engine": "openvino int8+bf16"},
}


def test_gate_takes_the_fastest_variant_within_tolerance():
    choice = choose_variant(FIGURES)  # default tolerance 0.01: int8 is 0.02 below, out
    assert choice.variant == "auto"
    assert choice.per_variant["int8"]["eligible"] is False and choice.per_variant["auto"]["eligible"] is True
    assert "onnx" not in choice.per_variant  # ONNX Runtime is the record, not a serving candidate
    assert choice.reasons[-1].startswith("chosen: auto")
    assert choose_variant(FIGURES, tolerance=0.03).variant == "int8"
    assert choose_variant(FIGURES, tolerance=0.0).variant == "fp32"  # the reference is always eligible
    json.dumps(choice.to_dict())


def test_gate_ties_go_to_the_more_accurate_variant_and_bad_figures_are_named():
    tie = {"fp32": {"map50_95": 0.6, "latency_ms": 10.0}, "int8": {"map50_95": 0.599, "latency_ms": 10.0}}
    assert choose_variant(tie).variant == "fp32"
    with pytest.raises(ValueError, match="reference variant 'fp32'"):
        choose_variant({"int8": FIGURES["int8"]})
    with pytest.raises(ValueError, match="variant 'int8' lacks"):
        choose_variant({"fp32": FIGURES["fp32"], "int8": {"map50_95": 0.6}})
    with pytest.raises(ValueError, match=">= 0"):
        choose_variant(FIGURES, tolerance=-0.1)


# ------------------------------------------------------------------ export and evaluation (session model)


@pytest.fixture(scope="module")
def variants(onnx_model, dataset, tmp_path_factory):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from components.model import export_variants
    from components.model.evaluate import split_images

    out = tmp_path_factory.mktemp("variants") / "v"
    index = export_variants(onnx_model, out, calibration=split_images(dataset, "train"), calibration_images=16)
    return out, index


def test_export_writes_every_variant_in_the_ovms_layout(variants, onnx_model):
    import openvino as ov

    from components.model import read_variants
    from components.registry.core import sha256_file
    from serving.detector import Detector, declared_precision

    out, index = variants
    assert set(index) == {"onnx", "fp32", "auto", "int8"}
    assert (out / "onnx" / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    for name in ("fp32", "auto", "int8"):
        assert (out / name / "1" / "model.xml").is_file() and (out / name / "1" / "model.bin").is_file()
    read = read_variants(out)
    assert all(entry["sha256"] == sha256_file(entry["path"]) for entry in read.values())
    core = ov.Core()
    models = {n: core.read_model(str(read[n]["path"])) for n in ("fp32", "auto", "int8")}
    assert declared_precision(models["fp32"]) == "f32" and declared_precision(models["auto"]) is None
    # INT8 calibration really quantized the network (and left the float models alone) ...
    fq = {n: sum(op.get_type_name() == "FakeQuantize" for op in m.get_ops()) for n, m in models.items()}
    assert fq["int8"] > 10 and fq["fp32"] == fq["auto"] == 0
    # ... and every IR keeps the metadata the detector core reads.
    for name in ("fp32", "auto", "int8"):
        d = Detector(read[name]["path"])
        assert d.names == ["scratch", "bent"] and d.imgsz == (128, 128)
    assert Detector(read["fp32"]["path"]).engine.precision == "f32"
    assert Detector(read["int8"]["path"]).engine.quantized


def test_export_refuses_a_non_empty_folder_and_unknown_variants(onnx_model, tmp_path, val_images):
    from components.model import export_variants

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_variants(onnx_model, tmp_path / "x", calibration=val_images)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown variant"):
        export_variants(onnx_model, tmp_path / "y", calibration=val_images, variants=("fp16",))


def test_every_variant_is_evaluated_with_its_serving_engine(variants, dataset):
    from components.model import evaluate_variants

    out, _ = variants
    results = evaluate_variants(out, dataset, latency_runs=5)
    assert results["onnx"]["engine"] == "onnxruntime f32"
    assert results["fp32"]["engine"] == "openvino f32"
    assert results["int8"]["engine"].startswith("openvino int8+")
    for figures in results.values():
        assert figures["latency_ms"] > 0 and 0 <= figures["map50_95"] <= 1
        assert isinstance(figures["precision"], float)  # the detection metric, not the engine's precision
    assert results["fp32"]["declared_precision"] == "f32" and results["auto"]["declared_precision"] is None
    # The same f32 arithmetic on two engines: the same mAP (to rounding of borderline boxes).
    assert abs(results["fp32"]["map50_95"] - results["onnx"]["map50_95"]) <= 0.01
    assert results["fp32"]["map50"] > 0.1  # the session model detects: this compares real predictions
    choice = choose_variant(results)
    assert choice.variant in ("fp32", "auto", "int8")
