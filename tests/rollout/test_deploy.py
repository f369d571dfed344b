"""The one rollout transaction (components/rollout/deploy.py) over a scripted target, with the real MLflow.

The KServe and local targets are exercised in test_kserve_rollout.py and test_local_rollout.py;
here the target does exactly what each test says, so the transaction's own rules are visible:
which step failed, what is restored, what happens to the alias, that the target is closed.
"""

from __future__ import annotations

import dataclasses

import pytest

from components.registry import get_champion, promote
from components.rollout import Rollout, RolloutError, roll_out
from components.rollout.deploy import deploy
from components.rollout.render import ServingSpecError


class ScriptedTarget:
    """A :class:`components.rollout.deploy.Target` whose steps fail where the test says."""

    kind = "scripted"
    namespace = None

    def __init__(self, *, fail_at: str | None = None, restore_fails: bool = False, serving: str | None = None):
        self.fail_at = fail_at
        self.restore_fails = restore_fails
        self.serving = serving
        self.service = ""
        self.action: str | None = None
        self.calls: list[str] = []

    @property
    def location(self) -> str:
        return f"scripted:{self.service}"

    def prepare(self, mlflow_client, model_name: str, version: str) -> None:
        self.calls.append("prepare")
        self.service, self.version = model_name, version

    def snapshot(self) -> str | None:
        self.calls.append("snapshot")
        return self.serving

    def roll(self, stage) -> str | None:
        for step in ("loading", "waiting"):
            stage(step)
            self.calls.append(step)
            if self.fail_at == step:
                raise TimeoutError(f"{step} went wrong")
        self.action = "done"
        return "http://scripted.invalid"

    def restore(self) -> str:
        self.calls.append("restore")
        if self.restore_fails:
            raise RolloutError("putting back the old version failed: server gone")
        return f"back on {self.serving}"

    def settle(self) -> str:
        return "; settled"

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def versions(cheap_versions, model_name, mlflow_client) -> None:
    """Two versions; v1 serves and is the champion before each test rolls out v2."""
    cheap_versions(model_name, 2)
    promote(mlflow_client, model_name, "1")


def test_a_good_rollout_moves_the_alias_and_tags_where_it_serves(versions, mlflow_client, model_name):
    target = ScriptedTarget(serving="1")
    seen = []
    result = roll_out(
        target, mlflow_client, model_name=model_name, version=2, smoke=lambda url, name: seen.append((url, name))
    )
    assert isinstance(result, Rollout) and dataclasses.is_dataclass(result)
    assert result.deployed and result.reason is None and result.previous_version == "1" and result.action == "done"
    assert seen == [("http://scripted.invalid", model_name)]
    assert get_champion(mlflow_client, model_name) == "2"
    assert mlflow_client.get_model_version(model_name, "2").tags["vinspect.deployed_to"] == f"scripted:{model_name}"
    assert target.calls == ["prepare", "snapshot", "loading", "waiting", "close"]
    assert result.as_dict()["status"] == "deployed"


@pytest.mark.parametrize("fail_at", ["loading", "waiting", "smoke"])
def test_a_failed_step_is_named_restored_and_leaves_the_alias(versions, mlflow_client, model_name, fail_at):
    target = ScriptedTarget(fail_at=fail_at, serving="1")

    def smoke(url, name):
        raise ValueError("golden image: found nothing")

    result = roll_out(target, mlflow_client, model_name=model_name, version="2", smoke=smoke)
    assert result.status == "rolled_back"
    expected = "smoke-testing failed: golden image" if fail_at == "smoke" else f"{fail_at} failed: {fail_at} went wrong"
    assert result.reason.startswith(expected)
    assert result.restore == "back on 1; settled"
    assert get_champion(mlflow_client, model_name) == "1"
    assert target.calls[-2:] == ["restore", "close"]


def test_a_failed_restore_still_puts_the_alias_back_and_is_loud(versions, mlflow_client, model_name):
    target = ScriptedTarget(restore_fails=True, serving="1")

    def broken_alias_move(client, name, version):
        client.set_registered_model_alias(name, "champion", version)  # half done, then fails
        raise RuntimeError("MLflow went away")

    with pytest.raises(
        RolloutError,
        match=r"moving the champion alias failed: MLflow went away; rollback incomplete: "
        r"putting back the old version failed: server gone",
    ):
        roll_out(target, mlflow_client, model_name=model_name, version="2", move_alias=broken_alias_move)
    assert get_champion(mlflow_client, model_name) == "1"  # this call's own move was undone anyway
    assert target.calls[-1] == "close"


def test_deploy_refuses_an_unknown_mode_before_touching_anything():
    with pytest.raises(ServingSpecError, match=r"serving mode 'knative': expected 'raw', 'modelmesh' or 'local'"):
        deploy(None, model_name="m", version="1", mode="knative")
