"""A Solver with its own prompt template and optional Python code: :class:`CustomSolver`.

Every prompting Solver renders an example with its task's ``template``. A ``custom`` Solver
wraps any other Solver (its ``inner``) and changes three things about how it answers, each
optional and each plain text in its Solver JSON (so a saved one reloads and serves
anywhere a Solver does):

* ``template`` -- a Python format string that replaces the task's template (``{input}`` and
  the input's own field names, e.g. ``"Review: {input}\\nSentiment:"``); demonstrations are
  rendered with it too. Only plain field names are allowed (no ``{0}``, ``{input.attr}``,
  ``{input[0]}``, nothing nested in a format spec); unknown fields, or a template that does
  not render an example, fall back to the task's template for that example (recorded).
* ``render`` -- the source of a module defining ``render(input: str, prompt: str) -> str``:
  ``input`` is the example's text, ``prompt`` is the example rendered with the template
  (what the LM reads for this example, ending where the answer starts); it returns the text
  to show instead. Demonstrations keep the template's rendering.
* ``postprocess`` -- the source of a module defining ``postprocess(output: str) -> str``:
  the inner Solver's answer in, the answer to score or serve out.

**The code runs only inside the sandbox** (:func:`metaskill.tasks.sandbox.run_code`:
bubblewrap, no network, no writes outside its temporary folder, the standard library only),
**one sandbox process per batch of examples** (:func:`run_batch`), with a wall-time limit
(``timeout_s``, for the whole batch) and an address-space limit (``mem_mb``). The source is
compiled in the parent first (:func:`check_code`: it must parse and define the function with
that signature) but never executed outside the sandbox. Where bubblewrap cannot run, the
sandbox refuses (its one-line reason, :class:`~metaskill.tasks.sandbox.SandboxUnavailableError`)
unless the user opted into its weaker hook-only mode (``METASKILL_SANDBOX=hook-only``).

A failure never stops an answer: an input whose ``render`` or ``postprocess`` raised, returned
something other than a string, or whose batch timed out, ran out of memory or was refused
by the sandbox, gets the uncoded behaviour (the template's prompt; the inner Solver's
output), and its Attempt's ``meta["custom_fallback"]`` maps the stage (``template``,
``render``, ``postprocess``) to the reason. The archive search (:mod:`metaskill.evolve`)
reads that key: a child with any fallback on its first evaluation is recorded invalid with
the reason, never retried.

Solver JSON: ``schema_version`` 2 (metaskill before it stops with "upgrade" instead of a
field error); its ``state`` is ``{"inner": <inner Solver JSON>, "template", "render",
"postprocess", "timeout_s", "mem_mb"}``.

Example:
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.eval.solvers import ZeroShot, load_solver
    >>> s = CustomSolver(ScriptedLM(default="yes"), ZeroShot(ScriptedLM(default="yes")),
    ...                  template="Q: {input}\\nA:")
    >>> j = s.to_json()
    >>> j["schema_version"], j["kind"], j["state"]["template"]
    (2, 'custom', 'Q: {input}\\nA:')
    >>> load_solver(j, lm=s.lm).template
    'Q: {input}\\nA:'
"""

from __future__ import annotations

import ast
import json
import shutil
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example
from metaskill.eval.solver import Attempt, Solver

if TYPE_CHECKING:
    from metaskill.tasks.base import Task

#: The functions a custom Solver may define, and their parameters in order.
FUNCTIONS: dict[str, tuple[str, ...]] = {"render": ("input", "prompt"),
                                         "postprocess": ("output",)}

#: Longest source of one function, and longest template, in characters.
MAX_CODE_CHARS = 8000
MAX_TEMPLATE_CHARS = 2000

FALLBACK_KEY = "custom_fallback"

#: The sandbox limits of a custom Solver that sets none: wall seconds for one batch (all
#: inputs of one ``solve`` call), and the address space in MiB.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEM_MB = 256

# The program run inside the sandbox: loads the code, calls the function once per input,
# writes [value, error] per call (or the load error) to results.json. The code's own prints
# are swallowed; only results.json is read back.
_DRIVER = r'''
import io, json, sys
def _main():
    with open("calls.json", encoding="utf-8") as f:
        job = json.load(f)
    name, real_out = job["name"], sys.stdout
    sys.stdout = io.StringIO()
    ns = {"__name__": "solver_code"}
    try:
        with open("solver_code.py", encoding="utf-8") as f:
            src = f.read()
        exec(compile(src, "solver_code.py", "exec"), ns)
        fn = ns[name]
    except BaseException as e:
        results = {"load_error": f"{type(e).__name__}: {e}"[:300]}
    else:
        results = []
        for args in job["calls"]:
            try:
                value = fn(*args)
                if not isinstance(value, str):
                    raise TypeError(f"{name} returned {type(value).__name__}, not str")
                results.append([value, None])
            except BaseException as e:
                results.append([None, f"{type(e).__name__}: {e}"[:300]])
    sys.stdout = real_out
    with open("results.json", "w", encoding="utf-8") as f:
        json.dump(results, f)
_main()
'''


def check_template(template: str) -> set[str]:
    """The field names of a custom template, after checking its syntax.

    Raises:
        MetaskillError: it does not parse, uses a positional field, attribute or index
            access or a nested field, has no field at all (the input would never reach the
            LM), or is too long.

    Example:
        >>> sorted(check_template("Title: {title}\\n{input}\\nA:"))
        ['input', 'title']
        >>> try:
        ...     check_template("{input.__class__}")
        ... except MetaskillError as e:
        ...     print(str(e)[:48])
        template field '{input.__class__}' is not a plai
    """
    if len(template) > MAX_TEMPLATE_CHARS:
        raise MetaskillError(f"template has {len(template)} characters, over "
                             f"{MAX_TEMPLATE_CHARS}.")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise MetaskillError(f"template does not parse ({e}); escape literal braces as "
                             "{{ and }}.") from None
    fields: set[str] = set()
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if not name.isidentifier():
            raise MetaskillError(f"template field '{{{name}}}' is not a plain field name; use "
                                 "{input} or an input field such as {question}.")
        if spec and ("{" in spec or "}" in spec):
            raise MetaskillError(f"template field '{{{name}}}' has a nested field in its "
                                 "format spec.")
        fields.add(name)
    if not fields:
        raise MetaskillError("template has no field: the input would never reach the LM; "
                             "use {input}.")
    return fields


def render_template(template: str, example: Example) -> str:
    """``example`` rendered with ``template`` as :meth:`Task.render` renders it.

    Raises:
        MetaskillError: a field the example does not have, or a value that does not format.

    Example:
        >>> render_template("Q: {input}\\nA:", Example(id="1", input="2+2"))
        'Q: 2+2\\nA:'
    """
    fields = example.input if isinstance(example.input, dict) else {}
    have = {"input", *fields}
    missing = check_template(template) - have
    if missing:
        raise MetaskillError(f"template field(s) {', '.join(sorted(missing))} are not fields "
                             f"of example '{example.id}' (it has: {', '.join(sorted(have))}).")
    try:
        return template.format(input=example.text, **fields)
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise MetaskillError(f"template does not render example '{example.id}': "
                             f"{type(e).__name__}: {e}.") from None


def check_code(name: str, source: str) -> None:
    """Check, without running it, that ``source`` defines function ``name`` as required.

    It must be at most :data:`MAX_CODE_CHARS` long, parse as Python, and define at module
    level ``def name(...)`` taking exactly the parameters :data:`FUNCTIONS` lists (by
    position; defaults, ``*args`` and keyword-only parameters are refused).

    Raises:
        MetaskillError: naming the problem (a syntax error with its line).

    Example:
        >>> check_code("postprocess", "def postprocess(output):\\n    return output.strip()")
        >>> check_code("render", "def render(input):\\n    return input")
        Traceback (most recent call last):
        ...
        metaskill.core.errors.MetaskillError: render must take (input, prompt), got (input).
    """
    if name not in FUNCTIONS:
        raise MetaskillError(f"unknown custom function '{name}'; use one of: "
                             f"{', '.join(FUNCTIONS)}.")
    want = FUNCTIONS[name]
    if len(source) > MAX_CODE_CHARS:
        raise MetaskillError(f"{name}: the code has {len(source)} characters, over "
                             f"{MAX_CODE_CHARS}.")
    try:
        tree = ast.parse(source, filename=f"{name}.py")
    except (SyntaxError, ValueError) as e:
        where = f" at line {e.lineno}" if getattr(e, "lineno", None) else ""
        msg = getattr(e, "msg", None) or str(e)
        raise MetaskillError(f"{name}: syntax error{where}: {msg}.") from None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not defs:
        raise MetaskillError(f"{name}: the code defines no top-level function "
                             f"'def {name}({', '.join(want)})'.")
    a = defs[-1].args
    got = tuple(p.arg for p in [*a.posonlyargs, *a.args])
    if got != want or a.vararg or a.kwarg or a.kwonlyargs or a.defaults:
        raise MetaskillError(f"{name} must take ({', '.join(want)}), got ({', '.join(got)}).")


def run_batch(name: str, source: str, calls: Sequence[Sequence[str]], *,
              timeout_s: float = 10.0, mem_mb: int = 256,
              mode: str | None = None) -> list[tuple[str | None, str | None]]:
    """Call function ``name`` of ``source`` once per argument tuple, all in ONE sandbox run.

    Args:
        name: ``render`` or ``postprocess``.
        source: the module's source (checked with :func:`check_code` first).
        calls: the arguments of each call.
        timeout_s: wall-time limit of the whole batch (the sandbox's CPU limit too).
        mem_mb: the sandbox's address-space limit.
        mode: the sandbox mode (None: ``$METASKILL_SANDBOX``, else bubblewrap).

    Returns:
        ``(value, None)`` or ``(None, reason)`` per call, in order. A timeout, the memory
        limit, a crash, code that does not load or a sandbox that cannot run gives every
        call the same reason. Never raises for what the code does.

    Example:
        >>> run_batch("postprocess", "def postprocess(output):\\n    return output[::-1]",
        ...           [("ab",), ("xyz",)])  # doctest: +SKIP
        [('ba', None), ('zyx', None)]
    """
    from metaskill.tasks.sandbox import SandboxUnavailableError, run_code

    if not calls:
        return []
    n = len(calls)

    def every(reason: str) -> list[tuple[str | None, str | None]]:
        return [(None, f"{name}: {reason}")] * n

    try:
        check_code(name, source)
    except MetaskillError as e:
        return every(str(e).removeprefix(f"{name}: "))
    job = json.dumps({"name": name, "calls": [list(c) for c in calls]}, ensure_ascii=False)
    try:
        result = run_code(_DRIVER, timeout_s=timeout_s, mem_mb=mem_mb, keep_dir=True,
                          files={"solver_code.py": source, "calls.json": job}, mode=mode)
    except SandboxUnavailableError as e:
        return every(f"refused: {e}")
    folder = next((Path(x[4:]) for x in result.isolation if x.startswith("dir=")), None)
    try:
        if result.timed_out:
            return every(f"timed out after {timeout_s:g} s (one sandbox run for {n} inputs)")
        if result.memory_exceeded:
            return every(f"memory limit of {mem_mb} MiB exceeded (one sandbox run for {n} "
                         "inputs)")
        try:
            data = json.loads((folder / "results.json").read_text(encoding="utf-8")) \
                if folder is not None else None
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and "load_error" in data:
            return every(f"the code does not load: {data['load_error']}")
        if not isinstance(data, list) or len(data) != n:
            return every(f"the sandbox run gave no results ({result.summary()})")
        return [(v if isinstance(v, str) else None,
                 None if isinstance(v, str) else f"{name}: {err or 'no value'}")
                for v, err in data]
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def sandbox_problem() -> str | None:
    """Why code cannot run in the sandbox here (its one-line reason), or None if it can.

    None under bubblewrap, or in the hook-only mode the user opted into
    (``METASKILL_SANDBOX=hook-only``).

    Example:
        >>> sandbox_problem() is None or "bubblewrap" in sandbox_problem()
        True
    """
    from metaskill.tasks.sandbox import SandboxUnavailableError, bwrap_problem, sandbox_mode

    try:
        mode = sandbox_mode()
    except SandboxUnavailableError as e:
        return str(e)
    return bwrap_problem() if mode == "bwrap" else None


class _TaskView:
    """The task as the inner Solver sees it: the custom template, and per-example renders."""

    def __init__(self, task: Any, template: str | None) -> None:
        self._task = task
        self._template = template
        self.rendered: dict[str, str] = {}
        self.errors: dict[str, str] = {}  # example id -> template failure (fell back)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    @property
    def template(self) -> str:
        return self._template if self._template is not None else self._task.template

    def templated(self, example: Example) -> str:
        """The example with the custom template (the task's where it fails, recorded)."""
        if self._template is not None:
            try:
                return render_template(self._template, example)
            except MetaskillError as e:
                self.errors[example.id] = str(e)
        return str(self._task.render(example))

    def render(self, example: Example) -> str:
        got = self.rendered.get(example.id)
        return got if got is not None else self.templated(example)

    def demo(self, example: Example) -> str:
        return f"{self.render(example)} {example.answer or ''}".rstrip()


class CustomSolver(Solver):
    """Another Solver with its own template and optional ``render`` / ``postprocess`` code.

    See the module doc for what each part does, where the code runs and what a failure does.

    Args:
        lm: the LM (the inner Solver's).
        inner: the Solver that answers.
        template: replaces the task's template (None: the task's).
        render: source defining ``render(input: str, prompt: str) -> str`` (or None).
        postprocess: source defining ``postprocess(output: str) -> str`` (or None).
        timeout_s: the sandbox's wall-time limit for one batch (None:
            :data:`DEFAULT_TIMEOUT_S`).
        mem_mb: the sandbox's address-space limit in MiB (None: :data:`DEFAULT_MEM_MB`).

    Raises:
        MetaskillError: a template or code that does not pass :func:`check_template` /
            :func:`check_code`, or nothing to customise.
    """

    kind: ClassVar[str] = "custom"
    json_version: ClassVar[int] = 2

    def __init__(self, lm: Any, inner: Solver, *, template: str | None = None,
                 render: str | None = None, postprocess: str | None = None,
                 timeout_s: float | None = None, mem_mb: int | None = None) -> None:
        super().__init__(lm)
        timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        mem_mb = DEFAULT_MEM_MB if mem_mb is None else mem_mb
        if template is None and render is None and postprocess is None:
            raise MetaskillError("a custom Solver needs a template, render or postprocess.")
        if template is not None:
            check_template(template)
        for name, src in (("render", render), ("postprocess", postprocess)):
            if src is not None:
                check_code(name, src)
        if not (0 < timeout_s <= 600) or not (64 <= mem_mb <= 16384):
            raise MetaskillError(f"custom Solver limits out of range: timeout_s={timeout_s} "
                                 f"(0-600), mem_mb={mem_mb} (64-16384).")
        self.inner = inner
        self.template = template
        self.render = render
        self.postprocess = postprocess
        self.timeout_s = float(timeout_s)
        self.mem_mb = int(mem_mb)

    @property
    def has_code(self) -> bool:
        """Whether it runs Python (``render`` or ``postprocess``) in the sandbox."""
        return self.render is not None or self.postprocess is not None

    def _batch(self, name: str, source: str, calls: list[tuple[str, ...]]
               ) -> list[tuple[str | None, str | None]]:
        return run_batch(name, source, calls, timeout_s=self.timeout_s, mem_mb=self.mem_mb)

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """The inner Solver's answers with the template, ``render`` and ``postprocess``
        applied (one sandbox run per function per batch); fallbacks in
        ``meta["custom_fallback"]``."""
        view = _TaskView(task, self.template)
        fallback: dict[str, dict[str, str]] = {e.id: {} for e in examples}
        prompts = [view.templated(e) for e in examples]
        if self.render is not None:
            results = self._batch("render", self.render,
                                  [(e.text, p) for e, p in zip(examples, prompts, strict=True)])
            for e, (value, err) in zip(examples, results, strict=True):
                if err is not None:
                    fallback[e.id]["render"] = err
                else:
                    view.rendered[e.id] = str(value)
        attempts = list(self.inner.solve(view, examples))  # type: ignore[arg-type]
        asked = {e.id for e in examples}
        demo_errors = [err for i, err in view.errors.items() if i not in asked]
        for e in examples:
            if e.id in view.errors:
                fallback[e.id]["template"] = f"template: {view.errors[e.id]}"
            elif demo_errors:
                fallback[e.id]["template"] = f"template: a demonstration: {demo_errors[0]}"
        if self.postprocess is not None:
            todo = [i for i, a in enumerate(attempts) if a.error is None]
            results = self._batch("postprocess", self.postprocess,
                                  [(attempts[i].output,) for i in todo])
            for i, (value, err) in zip(todo, results, strict=True):
                a = attempts[i]
                if err is not None:
                    fallback.setdefault(a.example_id, {})["postprocess"] = err
                else:
                    a.meta["before_postprocess"] = a.output
                    a.output = str(value)
        for a in attempts:
            if fallback.get(a.example_id):
                a.meta[FALLBACK_KEY] = dict(fallback[a.example_id])
        return attempts

    def state(self) -> dict[str, Any]:
        return {"inner": self.inner.to_json(), "template": self.template,
                "render": self.render, "postprocess": self.postprocess,
                "timeout_s": self.timeout_s, "mem_mb": self.mem_mb}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> CustomSolver:
        from metaskill.eval.solvers import load_solver

        if not isinstance(state.get("inner"), dict):
            raise MetaskillError("a custom Solver's state has no 'inner' Solver JSON.")
        inner = load_solver(state["inner"], lm=lm)
        return cls(lm, inner, template=state.get("template"), render=state.get("render"),
                   postprocess=state.get("postprocess"), timeout_s=state.get("timeout_s"),
                   mem_mb=state.get("mem_mb"))


def customised(solver: Solver, *, template: str | None = None, render: str | None = None,
               postprocess: str | None = None, timeout_s: float | None = None,
               mem_mb: int | None = None) -> Solver:
    """``solver`` with these custom parts: a custom Solver's own parts replaced (None keeps
    them), any other Solver wrapped; unchanged when there is nothing to customise.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> from metaskill.eval.solvers import ZeroShot
        >>> s = customised(ZeroShot(ScriptedLM()), template="{input} ->")
        >>> customised(s, postprocess="def postprocess(output):\\n    return output").template
        '{input} ->'
    """
    if isinstance(solver, CustomSolver):
        base, parts = solver.inner, {"template": solver.template, "render": solver.render,
                                     "postprocess": solver.postprocess,
                                     "timeout_s": solver.timeout_s, "mem_mb": solver.mem_mb}
    else:
        base, parts = solver, {}
    new = {"template": template, "render": render, "postprocess": postprocess,
           "timeout_s": timeout_s, "mem_mb": mem_mb}
    parts.update({k: v for k, v in new.items() if v is not None})
    if not any(parts.get(k) is not None for k in ("template", "render", "postprocess")):
        return solver
    return CustomSolver(solver.lm, base, **parts)


def code_of(solver_json: dict[str, Any] | None) -> dict[str, str]:
    """The custom parts (``template``, ``render``, ``postprocess``) of a Solver JSON.

    Example:
        >>> code_of({"kind": "custom", "state": {"template": "{input}:", "render": None}})
        {'template': '{input}:'}
        >>> code_of({"kind": "zero-shot", "state": {}})
        {}
    """
    if not solver_json or solver_json.get("kind") != CustomSolver.kind:
        return {}
    state = solver_json.get("state") or {}
    return {k: state[k] for k in ("template", *FUNCTIONS) if isinstance(state.get(k), str)}


def fallbacks(attempts: Sequence[Attempt]) -> list[str]:
    """Each fallback recorded in attempts' meta, as ``"example id: stage: reason"``.

    Example:
        >>> a = Attempt(example_id="7", meta={FALLBACK_KEY: {"render": "render: boom"}})
        >>> fallbacks([a, Attempt(example_id="8")])
        ['7: render: boom']
    """
    out = []
    for a in attempts:
        for reason in (a.meta.get(FALLBACK_KEY) or {}).values():
            out.append(f"{a.example_id}: {reason}")
    return out


__all__ = ["DEFAULT_MEM_MB", "DEFAULT_TIMEOUT_S", "FALLBACK_KEY", "FUNCTIONS", "CustomSolver",
           "check_code", "check_template", "code_of", "customised", "fallbacks",
           "render_template", "run_batch", "sandbox_problem"]
