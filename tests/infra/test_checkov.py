"""checkov over every rendered overlay: no finding outside the reviewed skip list."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from infra.scan import Finding, ScanError, compare, load_skips, run_checkov
from tests.infra._scanners import require_tool
from tests.infra.conftest import find


@pytest.fixture(scope="module")
def checkov() -> str:
    return require_tool("checkov")


@pytest.fixture(scope="module")
def findings(checkov, rendered) -> list[Finding]:
    return run_checkov(rendered)


def test_every_finding_is_fixed_or_skipped_with_a_reason(findings):
    unexpected, stale = compare(findings, load_skips())
    assert unexpected == [], "new checkov findings (fix, or add to infra/checkov-skips.yaml):\n" + "\n".join(
        map(str, unexpected)
    )
    assert stale == [], f"entries of infra/checkov-skips.yaml that match nothing any more (remove them): {stale}"


def test_every_overlay_was_scanned(findings, rendered):
    assert {f.overlay for f in findings} == set(rendered)


def test_a_new_weakness_is_reported(checkov, rendered):
    # A pod that mounts its service-account token again must fail the scan.
    objects = copy.deepcopy(rendered["default"])
    find(objects, "Deployment", "dashboard")["spec"]["template"]["spec"].pop("automountServiceAccountToken")
    unexpected, _ = compare(run_checkov({"default": objects}), load_skips())
    assert [(f.check, f.resource) for f in unexpected] == [("CKV_K8S_38", "Deployment.vinspect.dashboard")]


def test_skip_entries_need_a_reason(tmp_path: Path):
    bad = tmp_path / "skips.yaml"
    bad.write_text("skips:\n  - check: CKV_K8S_40\n    resources: [Deployment.a.b]\n")
    with pytest.raises(ScanError, match="entry 1 needs check, resources and reason"):
        load_skips(bad)
