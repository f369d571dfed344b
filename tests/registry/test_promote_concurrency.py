"""Concurrent alias moves against the real MLflow server (issue 18, point 4).

Every final state must be one that some sequential order of the successful calls gives, and a
failed call must never undo another call's success. Bounded: a few rounds, loopback only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from components.registry import (
    AliasLockTimeout,
    alias_lock,
    champion_state,
    get_champion,
    promote,
    restore_champion,
    rollback,
    undo_move,
)
from components.registry.aliases import TAG_LOCK_EXPIRES, TAG_LOCK_OWNER, lock_name

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUNDS = 6


def _client(local_stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=local_stack.mlflow_uri, registry_uri=local_stack.mlflow_uri)


def _together(local_stack, calls):
    """Run ``calls`` (each ``f(client)``) at the same moment, one thread and client each."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, call):
        client = _client(local_stack)
        barrier.wait()
        try:
            results[i] = ("ok", call(client))
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            results[i] = ("error", exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    return results


def _sequential_states(start, versions):
    """Final (champion, history) of every order of promoting ``versions`` from ``start``."""
    from itertools import permutations

    states = set()
    for order in permutations(versions):
        champion, history = start
        history = list(history)
        for v in order:
            if v != champion:
                if champion is not None:
                    history.append(champion)
                champion = v
        states.add((champion, tuple(history)))
    return states


def test_concurrent_promotes_end_in_a_sequential_state(local_stack, cheap_versions, model_name, mlflow_client):
    cheap_versions(model_name, 4)
    allowed = _sequential_states(("1", []), ["2", "3", "4"])
    seen = []
    for _ in range(ROUNDS):
        restore_champion(mlflow_client, model_name, "1", [])
        results = _together(local_stack, [lambda c, v=v: promote(c, model_name, v) for v in ("2", "3", "4")])
        assert all(kind == "ok" for kind, _ in results), results
        champion, history = champion_state(mlflow_client, model_name)
        seen.append((champion, tuple(history)))
        assert (champion, tuple(history)) in allowed, (champion, history, results)
        # The original champion stays reachable by rollback.
        assert history[0] == "1"
    # The lock is gone after every round.
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        mlflow_client.get_registered_model(lock_name(model_name))


def test_a_failed_call_never_undoes_another_calls_success(local_stack, cheap_versions, model_name, mlflow_client):
    """A promote whose later step fails puts back only its own move; B's success stands."""
    cheap_versions(model_name, 3)
    for _ in range(ROUNDS):
        restore_champion(mlflow_client, model_name, "1", [])

        def failing(client):
            moved = promote(client, model_name, "2")
            time.sleep(0.05)  # the rest of a rollout, which then fails
            return undo_move(client, model_name, moved)

        results = _together(local_stack, [failing, lambda c: promote(c, model_name, "3")])
        assert results[1][0] == "ok", results
        champion, history = champion_state(mlflow_client, model_name)
        assert champion == "3", (champion, history, results)  # B reported success: it stands
        assert history in (["1"], ["1", "2"]), history


def test_promote_and_rollback_race_stays_consistent(local_stack, cheap_versions, model_name, mlflow_client):
    cheap_versions(model_name, 3)
    for _ in range(ROUNDS):
        restore_champion(mlflow_client, model_name, "2", ["1"])
        results = _together(local_stack, [lambda c: promote(c, model_name, "3"), lambda c: rollback(c, model_name)])
        assert all(kind == "ok" for kind, _ in results), results
        state = champion_state(mlflow_client, model_name)
        # promote then rollback: (2, [1]); rollback then promote: (3, [1])
        assert (state[0], state[1]) in (("2", ["1"]), ("3", ["1"])), (state, results)


def test_concurrent_cli_promotes(local_stack, cheap_versions, model_name, mlflow_client):
    """`vinspect model promote` in separate processes, started together."""
    cheap_versions(model_name, 3)
    restore_champion(mlflow_client, model_name, "1", [])
    env = {**os.environ, **local_stack.env, "PYTHONPATH": REPO}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vinspect", "model", "promote", v, "--model", model_name],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for v in ("2", "3")
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    champion, history = champion_state(mlflow_client, model_name)
    assert (champion, tuple(history)) in _sequential_states(("1", []), ["2", "3"]), (champion, history)


def test_a_dead_holders_lock_expires_and_a_live_one_makes_others_wait(cheap_versions, model_name, mlflow_client):
    cheap_versions(model_name, 2)
    # A holder that died: its lease is over, so the next promote takes the lock over.
    mlflow_client.create_registered_model(
        lock_name(model_name), tags={TAG_LOCK_OWNER: "dead:1:x", TAG_LOCK_EXPIRES: f"{time.time() - 1:.3f}"}
    )
    assert promote(mlflow_client, model_name, "1").champion == "1"
    # A live holder: others wait, then give up with a message that says what to do.
    with alias_lock(mlflow_client, model_name):
        with pytest.raises(AliasLockTimeout, match="retry later"):
            with alias_lock(mlflow_client, model_name, wait_s=0.5):
                pass
        assert get_champion(mlflow_client, model_name) == "1"
