"""Helpers to read a compiled KFP IR YAML: tasks, their nesting, order, and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class Task:
    """One task of the IR, wherever it is nested."""

    name: str
    component: str
    dag: str  # the component holding it ("root" or a condition sub-DAG)
    spec: dict
    upstream: set[str] = field(default_factory=set)  # direct: dependentTasks + producers


def load(path: Path) -> dict:
    """The first document of the IR file (the pipeline spec; the platform spec is the second)."""
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    return {"spec": docs[0], "platform": docs[1] if len(docs) > 1 else {}}


def _dag_of(spec: dict, component: str) -> dict:
    return spec["root"]["dag"] if component == "root" else spec["components"][component].get("dag", {})


def tasks(spec: dict) -> dict[str, Task]:
    """Every task in every DAG, by task name."""
    out: dict[str, Task] = {}

    def walk(component: str) -> None:
        for name, t in _dag_of(spec, component).get("tasks", {}).items():
            up = set(t.get("dependentTasks", []))
            for kind in ("parameters", "artifacts"):
                for value in t.get("inputs", {}).get(kind, {}).values():
                    for key in ("taskOutputParameter", "taskOutputArtifact"):
                        if key in value:
                            up.add(value[key]["producerTask"])
            out[name] = Task(name, t["componentRef"]["name"], component, t, up)
            ref = t["componentRef"]["name"]
            if "dag" in spec["components"].get(ref, {}):
                walk(ref)

    walk("root")
    return out


def upstream_closure(all_tasks: dict[str, Task], name: str) -> set[str]:
    """Every task that must finish before ``name`` starts (through enclosing sub-DAGs too)."""
    dag_task = {t.component: t.name for t in all_tasks.values()}  # sub-DAG component -> its task
    seen: set[str] = set()
    stack = [name]
    while stack:
        current = all_tasks[stack.pop()]
        parents = set(current.upstream)
        if current.dag != "root":
            parents.add(dag_task[current.dag])  # whatever gates the enclosing branch
        for p in parents:
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def enclosing_conditions(spec: dict, all_tasks: dict[str, Task], name: str) -> list[str]:
    """The trigger conditions of the branches enclosing ``name``, innermost first."""
    dag_task = {t.component: t.name for t in all_tasks.values()}
    out = []
    current = all_tasks[name]
    while True:
        cond = current.spec.get("triggerPolicy", {}).get("condition")
        if cond:
            out.append(cond)
        if current.dag == "root":
            return out
        current = all_tasks[dag_task[current.dag]]


def executor_of(spec: dict, task: Task) -> str:
    """The executor label of a container task."""
    return spec["components"][task.component]["executorLabel"]
