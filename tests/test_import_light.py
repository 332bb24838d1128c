"""``import metaskill`` must not pull in heavy libraries."""

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
