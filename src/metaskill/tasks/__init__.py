"""Tasks: Examples with splits, templates and Verifiers; loaders and built-in suites.

The names below are imported on first use, so ``import metaskill.tasks`` stays light
(no datasets, reasoning_gym or math_verify until a loader or verifier needs them).

Example:
    >>> from metaskill.tasks import get_task, list_tasks
    >>> t = get_task("sst2")
    >>> sorted(t.splits), t.verifier.name
    (['dev', 'test', 'train'], 'label')
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Task": "metaskill.tasks.base",
    "Verifier": "metaskill.tasks.base",
    "Verdict": "metaskill.tasks.base",
    "TASKS": "metaskill.tasks.registry",
    "TaskLoader": "metaskill.tasks.registry",
    "get_task": "metaskill.tasks.registry",
    "list_tasks": "metaskill.tasks.registry",
    "make_registry": "metaskill.tasks.registry",
    "register_task_file": "metaskill.tasks.registry",
    "register_task_dir": "metaskill.tasks.registry",
    "load_task_file": "metaskill.tasks.registry",
    "validate_task_file": "metaskill.tasks.registry",
    "TaskFile": "metaskill.tasks.taskfile",
    "verifier_from_spec": "metaskill.tasks.verifiers",
    "safe_verify": "metaskill.tasks.verifiers",
    "safe_verify_batch": "metaskill.tasks.verifiers",
    "VERIFIERS": "metaskill.tasks.verifiers",
    "run_code": "metaskill.tasks.sandbox",
    "CodeResult": "metaskill.tasks.sandbox",
    "export_split": "metaskill.tasks.splits",
    "FieldMap": "metaskill.tasks.sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metaskill.tasks' has no attribute '{name}'")
