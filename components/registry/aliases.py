"""Moving the ``champion`` alias: promote, rollback, undoing a move, and the alias lock.

Concurrent alias moves are serialized by :func:`alias_lock`. MLflow has no compare-and-set on
aliases or tags, but it does refuse to create a registered model whose name exists (a unique
key in its store, answered ``RESOURCE_ALREADY_EXISTS``), so creating a companion registered
model ``<name>.alias-lock`` is an atomic test-and-set and deleting it releases the lock. Every
read-modify-write of ``champion`` and its history happens inside it; a failed call undoes only
its own change, which nobody else can have touched while it held the lock. The lock is a lease
(``vinspect.lock_expires``): a holder killed mid-move blocks the next caller until the lease
runs out, then the lock is taken over. What this does not cover: a holder that stalls longer
than the lease (two minutes for a move that takes well under a second) and a writer that moves
the alias around vinspect (the MLflow UI or API directly).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from components.registry.core import (
    CHAMPION,
    TAG_HISTORY,
    TAG_PROMOTED_AT,
    AliasLockTimeout,
    RegistryError,
    not_found,
    read_history,
)
from components.registry.queries import champion_state, get_champion

log = logging.getLogger(__name__)

# The history only needs to be as deep as anyone would roll back; the tag value is bounded.
_HISTORY_DEPTH = 50


@dataclass(frozen=True)
class AliasMove:
    """A move of ``champion`` made by :func:`promote` or :func:`rollback`, as :func:`undo_move` takes it.

    Attributes:
        name: Registered model name.
        champion: The champion after the call.
        history: The champion history (oldest first) as the call left it.
        undo: ``(champion, history)`` from before the call, or None when nothing moved.
    """

    name: str
    champion: str
    history: list[str]
    undo: tuple[str | None, list[str]] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Promotion(AliasMove):
    """What :func:`promote` did.

    Attributes:
        previous: The champion before (None for the first one, or when nothing changed).
        changed: False when ``version`` already was the champion.
    """

    previous: str | None = None
    changed: bool = False


@dataclass(frozen=True)
class Rollback(AliasMove):
    """What :func:`rollback` did.

    Attributes:
        rolled_back_from: The champion before the rollback (None when there was none).
    """

    rolled_back_from: str | None = None


LOCK_SUFFIX = ".alias-lock"
TAG_LOCK_OWNER = "vinspect.lock_owner"
TAG_LOCK_EXPIRES = "vinspect.lock_expires"
# A move takes well under a second; the lease only matters when a holder died.
LOCK_LEASE_S = 120.0
LOCK_WAIT_S = 60.0


def _already_exists(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return "RESOURCE_ALREADY_EXISTS" in str(code) or "already exists" in str(exc)


def lock_name(model_name: str) -> str:
    """The registered-model name that is the alias lock of ``model_name``."""
    return model_name + LOCK_SUFFIX


def _lock_tags(mlflow_client, name: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(mlflow_client.get_registered_model(name).tags or {})
    except MlflowException as exc:
        if not_found(exc):
            return None
        raise


@contextlib.contextmanager
def alias_lock(
    mlflow_client,
    model_name: str,
    *,
    wait_s: float = LOCK_WAIT_S,
    lease_s: float = LOCK_LEASE_S,
) -> Iterator[str]:
    """Hold the lock that serializes every move of ``model_name``'s aliases and history.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model whose aliases are about to move.
        wait_s: How long to wait for another holder before giving up.
        lease_s: How long this hold counts as alive; after that another caller may take over.

    Yields:
        This holder's owner id.

    Raises:
        AliasLockTimeout: Another holder kept the lock for ``wait_s`` seconds.
    """
    import random
    import socket
    import uuid

    from mlflow.exceptions import MlflowException

    name = lock_name(model_name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            mlflow_client.create_registered_model(
                name,
                tags={TAG_LOCK_OWNER: owner, TAG_LOCK_EXPIRES: f"{time.time() + lease_s:.3f}"},
                description=f"vinspect: lock serializing moves of {model_name}'s champion alias; "
                "held for well under a second, removed when released",
            )
            break
        except MlflowException as exc:
            # MLflow's SQL store answers a duplicate name by looking the existing model up: when
            # the holder released it in between, that lookup says "does not exist". Both mean
            # "held a moment ago": try again.
            if not (_already_exists(exc) or not_found(exc)):
                raise
        tags = _lock_tags(mlflow_client, name)
        if tags is not None:
            try:
                expires = float(tags.get(TAG_LOCK_EXPIRES, "0"))
            except ValueError:
                expires = 0.0
            if time.time() > expires:
                # The holder died (or stalled past its lease): take over, unless it was
                # released or renewed in the meantime (re-read right before the delete).
                again = _lock_tags(mlflow_client, name)
                if again is not None and again.get(TAG_LOCK_OWNER) == tags.get(TAG_LOCK_OWNER):
                    log.warning("%s: alias lock of %s expired; taking it over", model_name, tags.get(TAG_LOCK_OWNER))
                    with contextlib.suppress(MlflowException):  # released meanwhile: nothing to take over
                        mlflow_client.delete_registered_model(name)
                continue
        if time.monotonic() > deadline:
            holder = (tags or {}).get(TAG_LOCK_OWNER, "unknown")
            raise AliasLockTimeout(
                f"model {model_name!r}: another promote or rollback ({holder}) held the alias lock for "
                f"{wait_s:.0f}s; retry later (a crashed holder's lock expires {lease_s:.0f}s after it "
                f"was taken, or delete the registered model {name!r})"
            )
        time.sleep(random.uniform(0.02, 0.15))
    try:
        yield owner
    finally:
        tags = _lock_tags(mlflow_client, name)
        if tags is not None and tags.get(TAG_LOCK_OWNER) == owner:
            # Failing to release leaves a lease that expires by itself; it must not hide the outcome.
            with contextlib.suppress(MlflowException):
                mlflow_client.delete_registered_model(name)
        else:
            log.warning("%s: the alias lock was taken over after this call's lease expired", model_name)


def promote(mlflow_client, model_name: str, version: str | int) -> Promotion:
    """Point ``champion`` at ``version``, remembering the previous champion for a rollback.

    Serialized with every other alias move of the model (:func:`alias_lock`), so concurrent
    calls end in a state some sequential order gives, and a failed call puts back only what it
    changed itself.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        version: The version to promote (must exist and be READY).

    Returns:
        The :class:`Promotion` (``previous`` is None for the first champion; ``history`` as left
        by this call).

    Raises:
        RegistryError: The version does not exist or failed registration.
        AliasLockTimeout: Another move held the lock too long.
    """
    from mlflow.exceptions import MlflowException

    version = str(version)
    with alias_lock(mlflow_client, model_name):
        try:
            mv = mlflow_client.get_model_version(model_name, version)
        except MlflowException as exc:
            if not_found(exc):
                raise RegistryError(
                    f"model {model_name!r} has no version {version}; see `vinspect model list`"
                ) from None
            raise
        if mv.status not in (None, "READY"):
            raise RegistryError(f"model {model_name!r} version {version} is {mv.status}, not READY")
        current = get_champion(mlflow_client, model_name)
        history = read_history(mlflow_client, model_name)
        if current == version:
            return Promotion(
                name=model_name, champion=version, history=history, undo=None, previous=None, changed=False
            )
        new_history = history
        if current is not None and (not history or history[-1] != current):
            new_history = (history + [current])[-_HISTORY_DEPTH:]
        if new_history != history:
            # History first: should this process die before the alias moves, the champion is
            # unchanged and the extra entry is harmless; the other order could lose the way back.
            mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(new_history))
        try:
            mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)
        except Exception:  # whatever stopped the move (even a bug), the history is put back; it re-raises
            if new_history != history:
                mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(history))
            raise
        mlflow_client.set_model_version_tag(
            model_name, version, TAG_PROMOTED_AT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
    log.info("%s: champion %s -> %s", model_name, current, version)
    return Promotion(
        name=model_name,
        champion=version,
        history=new_history,
        undo=(current, history),
        previous=current,
        changed=True,
    )


def rollback(mlflow_client, model_name: str, expect: str | None = None) -> Rollback:
    """Point ``champion`` back at the previous champion (a pointer change, no upload).

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        expect: When given, the version the caller means to roll back to; if the history says
            otherwise (another move came in between), nothing changes and RegistryError is raised.

    Returns:
        The :class:`Rollback`.

    Raises:
        RegistryError: When no previous champion is recorded, or it is not ``expect``.
        AliasLockTimeout: Another move held the lock too long.
    """
    with alias_lock(mlflow_client, model_name):
        history = read_history(mlflow_client, model_name)
        current = get_champion(mlflow_client, model_name)
        if not history:
            raise RegistryError(
                f"model {model_name!r}: no previous champion recorded (current: {current}); "
                f"use `vinspect model promote VERSION` to choose one"
            )
        if expect is not None and history[-1] != str(expect):
            raise RegistryError(
                f"model {model_name!r}: the previous champion is now {history[-1]}, not {expect} "
                f"(another promote or rollback came in between); nothing changed"
            )
        before = list(history)
        previous = history.pop()
        # Alias first: should this process die before the history is written, the popped entry
        # is still there and a second rollback lands on the same version.
        mlflow_client.set_registered_model_alias(model_name, CHAMPION, previous)
        try:
            mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(history))
        except Exception:  # whatever stopped the history write, the alias goes back; it re-raises
            if current is not None:
                mlflow_client.set_registered_model_alias(model_name, CHAMPION, current)
            raise
    log.info("%s: champion rolled back %s -> %s", model_name, current, previous)
    return Rollback(
        name=model_name, champion=previous, history=history, undo=(current, before), rolled_back_from=current
    )


def undo_move(
    mlflow_client,
    model_name: str,
    moved: Any,
    *,
    before: tuple[str | None, list[str]] | None = None,
    target: str | None = None,
) -> str:
    """Undo an alias move this caller made (the result of :func:`promote` or :func:`rollback`).

    Only the caller's own move is undone, and only while the state is still the one it left:
    a later promote by someone else stands.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        moved: What the move returned (an :class:`AliasMove`; None when it raised).
        before: ``(champion, history)`` read just before a move that raised; with ``target``,
            a half-done move (``champion`` already at ``target``) is put back to it.
        target: The version the failed move was moving to.

    Returns:
        What happened, for the rollout's report.
    """
    if isinstance(moved, AliasMove) and moved.undo:
        before_champion, before_history = moved.undo
        if restore_champion(
            mlflow_client, model_name, before_champion, before_history, expect=(moved.champion, moved.history)
        ):
            return f"champion put back to {before_champion}"
        return "champion left alone: another call moved it since"
    if moved is None and before is not None and target is not None:
        # A move that raised part-way (a custom mover): undo only if it left its own target.
        with alias_lock(mlflow_client, model_name):
            now = champion_state(mlflow_client, model_name)
            if now[0] == str(target) and (now[0], list(now[1])) != (before[0], list(before[1])):
                _restore_unlocked(mlflow_client, model_name, before[0], before[1])
                return f"champion put back to {before[0]}"
    return "the champion alias had not moved"


def _restore_unlocked(mlflow_client, model_name: str, version: str | None, history: list[str]) -> None:
    from mlflow.exceptions import MlflowException

    mlflow_client.set_registered_model_tag(model_name, TAG_HISTORY, json.dumps(history))
    if version is None:
        with contextlib.suppress(MlflowException):  # no champion alias to remove: already as wanted
            mlflow_client.delete_registered_model_alias(model_name, CHAMPION)
    else:
        mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)


def restore_champion(
    mlflow_client,
    model_name: str,
    version: str | None,
    history: list[str],
    expect: tuple[str | None, list[str]] | None = None,
) -> bool:
    """Put ``champion`` and its history back as they were (used by a failed rollout).

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        version: Champion to restore (None removes the alias).
        history: History to restore.
        expect: ``(champion, history)`` this caller left; when the state is no longer that
            (another call moved the alias since), nothing is restored: undoing would throw
            away that call's success.

    Returns:
        True when restored, False when skipped because of ``expect``.
    """
    with alias_lock(mlflow_client, model_name):
        if expect is not None:
            now = champion_state(mlflow_client, model_name)
            if (now[0], list(now[1])) != (expect[0], list(expect[1])):
                log.warning(
                    "%s: not restoring champion %s: another call moved it since (now %s)", model_name, version, now[0]
                )
                return False
        _restore_unlocked(mlflow_client, model_name, version, history)
    return True
