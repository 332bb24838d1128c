"""``import metaskill`` must not pull in heavy libraries, and lower layers load no higher one.

``lint-imports`` (tests/test_import_contracts.py) checks the import statements; these tests
check what a fresh interpreter really loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "llama_cpp", "sentence_transformers", "ray", "sklearn")


def test_import_metaskill_is_light():
    code = (
        "import json, sys, metaskill, metaskill.lm, metaskill.lm.spec, metaskill.cli; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_loading_the_local_spec_does_not_import_llama_cpp_until_used():
    code = (
        "import json, sys; from metaskill.lm.spec import load_lm; "
        "lm = load_lm('local', cache=False); lm.identity; "
        "print(json.dumps('llama_cpp' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:  # the model package is not installed here
        assert "metaskill[local]" in out.stderr
        return
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


def loaded_after(code: str) -> object:
    """Run ``code`` in a fresh interpreter; it prints one JSON value last."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_eval_layer_loads_a_method_only_to_rebuild_its_solver():
    code = (
        "import json, sys; import metaskill.eval.harness, metaskill.eval.store; "
        "from metaskill.eval.solvers import SOLVERS; "
        "before = sorted(m for m in sys.modules if m.startswith('metaskill.methods')); "
        "cls = SOLVERS.get('self_consistency'); "
        "print(json.dumps([before, cls.__module__, 'metaskill.methods.raml' in sys.modules]))"
    )
    before, module, raml = loaded_after(code)  # type: ignore[misc]
    assert before == []
    assert module == "metaskill.methods.self_consistency" and raml is False


def test_serve_and_tasks_load_no_fastapi_and_no_heavy_library():
    code = (
        "import json, sys; import metaskill.serve, metaskill.serve.app, metaskill.tasks.registry, "
        "metaskill.core.stages; "
        f"print(json.dumps([m for m in {(*HEAVY, 'fastapi')!r} if m in sys.modules]))"
    )
    assert loaded_after(code) == []
