"""The LM interface: two batch verbs, ``complete`` and ``score``, with caching built in.

A backend subclasses :class:`LM` and implements ``_complete`` (uncached generation for a
batch of requests) and ``_score`` (log-likelihoods of continuations after a prompt).
Everything else -- validation, the ``choices`` constraint, the cache, chat rendering for
``score`` -- lives here, once.

Example:
    >>> from metaskill.lm.fake import ScriptedLM
    >>> lm = ScriptedLM({"2+2=": "4"})
    >>> lm.complete([Request(prompt="2+2=")])[0].text
    '4'
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from metaskill.core.errors import InvalidParameterError, MethodError
from metaskill.core.guard import active_guard, check_text
from metaskill.core.hashing import stable_hash
from metaskill.core.types import Completion, Message, Request, Sample, Usage
from metaskill.lm.cache import Cache


def as_request(obj: Request | dict[str, Any]) -> Request:
    """Validate ``obj`` into a :class:`Request`; bad fields raise a one-line error.

    Raises:
        InvalidParameterError: a field is out of range or of the wrong type.

    Example:
        >>> as_request({"prompt": "hi", "temperature": -1})
        Traceback (most recent call last):
        ...
        metaskill.core.errors.InvalidParameterError: temperature must be in [0, 5], got -1.0.
    """
    if isinstance(obj, Request):
        return obj
    try:
        return Request(**obj)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            loc = ".".join(str(x) for x in err.get("loc", ()))
            msgs.append(f"{loc}: {msg}" if loc else msg)
        raise InvalidParameterError("; ".join(msgs)) from None


class LM(ABC):
    """A language model backend.

    Args:
        cache: a :class:`Cache` shared with other LMs, or None for no caching.

    Attributes:
        spec: the spec string that loads this backend again (e.g. ``"local"``).
        context_window: the model's context size in tokens, when known.
    """

    spec: str = "lm"
    context_window: int | None = None
    chat: bool = True
    constraints: frozenset[str] = frozenset()
    """The reply constraints this backend enforces: ``"json_schema"``, ``"grammar"``."""

    def __init__(self, cache: Cache | None = None) -> None:
        self.cache = cache

    # ---- identity ---------------------------------------------------------------
    @property
    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything about the model that changes an answer (backend, model hash, adapter)."""

    @property
    def name(self) -> str:
        """A short human-readable name of the model."""
        return self.spec

    # ---- public verbs -------------------------------------------------------------
    def complete(
        self, requests: Sequence[Request], *, cache: bool = True
    ) -> list[Completion]:
        """Answer a batch of requests, one :class:`Completion` per request, in order.

        Args:
            requests: the requests; plain dicts are validated into :class:`Request`.
            cache: set False to bypass the cache for this call (neither read nor written).

        Returns:
            One Completion per request. Cached ones have ``cached=True``, the usage the
            backend originally reported, and ``latency_s`` = the time the lookup took.

        A request with a ``json_schema`` gets a reply valid under it, or -- where the
        backend's reply breaks it (a server that ignores ``response_format``, a reply cut
        by ``max_tokens``) -- one more try at temperature >= 0.7 with the next seed,
        uncached; a reply still invalid comes back with ``finish_reason="invalid"`` and is
        not cached. ``Completion.retries`` counts the extra tries.

        Raises:
            InvalidParameterError: a request (given as a dict) has invalid fields.
            MethodError: a request asks for a constraint this backend cannot enforce.
        """
        reqs = [as_request(r) for r in requests]
        self._check_constraints(reqs)
        if active_guard() is not None:
            for r in reqs:
                text = r.prompt if r.prompt is not None else "\n".join(
                    m.content for m in r.messages or ())
                check_text(text, where=f"{type(self).__name__}.complete")
        out: list[Completion | None] = [None] * len(reqs)
        use_cache = cache and self.cache is not None
        keys = [self.request_key(r) for r in reqs] if use_cache else []
        if use_cache:
            assert self.cache is not None
            t0 = time.perf_counter()
            hits = self.cache.get_many(keys)
            found = [i for i, k in enumerate(keys) if k in hits]
            per_hit = (time.perf_counter() - t0) / max(1, len(found))
            for i in found:
                c = Completion.model_validate(hits[keys[i]])
                c.cached = True
                c.latency_s = per_hit  # what serving it took now; usage stays the original
                out[i] = c
        todo = [i for i, c in enumerate(out) if c is None]
        gen = [i for i in todo if reqs[i].choices is None]
        chosen = [i for i in todo if reqs[i].choices is not None]
        if gen:
            results = self._complete([reqs[i] for i in gen])
            for i, c in zip(gen, results, strict=True):
                out[i] = c
            self._validate_schemas(reqs, out, gen)
        for i in chosen:
            out[i] = self._complete_choice(reqs[i], cache=cache)
        keep = [i for i in todo if out[i] is not None and "invalid" not in (
            s.finish_reason for s in out[i].samples)]  # type: ignore[union-attr]
        if use_cache and keep:
            assert self.cache is not None
            self.cache.put_many(
                [(keys[i], out[i].model_dump(mode="json")) for i in keep],  # type: ignore[union-attr]
                model=self.name,
            )
        return [c for c in out if c is not None]

    def _check_constraints(self, reqs: Sequence[Request]) -> None:
        for r in reqs:
            kind = "json_schema" if r.json_schema is not None else (
                "grammar" if r.grammar is not None else None)
            if kind is not None and kind not in self.constraints:
                have = ", ".join(sorted(self.constraints)) or "none"
                raise MethodError(
                    f"the {self.spec} backend cannot enforce a {kind} constraint (it "
                    f"supports: {have}); drop the constraint or use a backend that has it.")

    def _validate_schemas(self, reqs: Sequence[Request], out: list[Completion | None],
                          idx: Sequence[int]) -> None:
        """Check ``json_schema`` replies; retry invalid ones once; mark what stays invalid."""
        from metaskill.lm.structured import schema_error

        def bad(i: int, c: Completion) -> list[int]:
            schema = reqs[i].json_schema
            assert schema is not None
            return [j for j, s in enumerate(c.samples) if schema_error(schema, s.text)]

        retry = [i for i in idx if reqs[i].json_schema is not None and bad(i, out[i])]  # type: ignore[arg-type]
        if not retry:
            return
        again = [reqs[i].model_copy(update={"seed": reqs[i].seed + 1,
                                             "temperature": max(0.7, reqs[i].temperature)})
                 for i in retry]
        for i, c in zip(retry, self._complete(again), strict=True):
            first = out[i]
            assert first is not None
            c.usage = first.usage + c.usage
            c.latency_s += first.latency_s
            c.retries = first.retries + 1
            for j in bad(i, c):
                c.samples[j].finish_reason = "invalid"
            out[i] = c

    def score(
        self,
        context: str | Sequence[Message | dict[str, str]],
        continuations: Sequence[str],
        *,
        cache: bool = True,
    ) -> list[float]:
        """Log-likelihood of each continuation after ``context``.

        Args:
            context: a plain prompt, or chat messages; messages are rendered with the
                model's chat template followed by the assistant turn's opening.
            continuations: strings whose summed token log-probabilities are returned.
            cache: set False to bypass the cache.

        Returns:
            One summed log-probability (natural log) per continuation.
        """
        prompt = context if isinstance(context, str) else self.render_chat(
            [m if isinstance(m, Message) else Message(**m) for m in context]
        )
        conts = list(continuations)
        check_text(prompt, where=f"{type(self).__name__}.score")
        use_cache = cache and self.cache is not None
        key = ""
        if use_cache:
            assert self.cache is not None
            key = stable_hash({"score": True, "model": self.identity, "prompt": prompt,
                               "conts": conts})
            hit = self.cache.get(key)
            if hit is not None:
                return [float(x) for x in hit]
        values = self._score(prompt, conts)
        if use_cache:
            assert self.cache is not None
            self.cache.put(key, values, model=self.name)
        return values

    # ---- adapters -----------------------------------------------------------------
    @property
    def adapter(self) -> str | None:
        """The adapter this LM serves (the part of its spec after ``+adapter:``), if any."""
        from metaskill.lm.adapters import split_adapter

        return split_adapter(self.spec)[1]

    def with_adapter(self, adapter: str | Path | None) -> LM:
        """A new LM: this model plus the LoRA adapter at ``adapter`` (None: the bare model).

        ``adapter`` is a training output folder (PEFT files, plus ``adapter.gguf`` for a GGUF
        base) or an adapter file. Backends that run local weights override this; the others
        refuse with a one-line error.

        Example:
            >>> from metaskill.lm.openai_compat import OpenAICompatLM
            >>> OpenAICompatLM("m", "http://127.0.0.1:9").with_adapter("a")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            metaskill.core.errors.MethodError: the openai:m@... backend cannot serve a LoRA ...
        """
        raise MethodError(
            f"the {self.spec} backend cannot serve a LoRA adapter; adapters need local weights "
            "(specs local, gguf:PATH or hf:PATH)."
        )

    def with_trained(self, peft_model: Any, checkpoint_dir: str | Path) -> LM:
        """This model plus the adapter of a PEFT model being trained (a checkpoint to score).

        The default saves the adapter to ``checkpoint_dir`` (with its GGUF export for a GGUF
        base) and serves it through :meth:`with_adapter` without the response cache, so a
        checkpoint is scored exactly as the final adapter will be served. Close it when done.
        """
        from metaskill.lm.adapters import base_model_path, export_gguf

        ck = Path(checkpoint_dir)
        peft_model.save_pretrained(str(ck), save_embedding_layers=False)
        base = base_model_path(self)
        if base.endswith(".gguf"):
            export_gguf(ck, base_gguf=base)
        lm = self.with_adapter(ck)
        lm.cache = None
        return lm

    # ---- helpers ------------------------------------------------------------------
    def request_key(self, request: Request) -> str:
        """Cache key of a request: model identity plus every field that changes the answer.

        The seed (and with it the sample index, since sample ``i`` uses ``seed + i``) is
        part of the key only where it matters: when sampling (temperature > 0) or n > 1.
        """
        fields = request.model_dump(mode="json")
        if request.temperature == 0 and request.n == 1:
            fields.pop("seed")
        return stable_hash({"model": self.identity, "request": fields})

    def render_chat(self, messages: Sequence[Message]) -> str:
        """Render messages as one prompt string ending where the assistant answers.

        Backends with a chat template override this; the default is a plain transcript.
        """
        lines = [f"{m.role}: {m.content}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    def prompt_of(self, request: Request) -> str:
        """The prompt string a request is rendered to."""
        if request.prompt is not None:
            return request.prompt
        assert request.messages is not None
        return self.render_chat(request.messages)

    def _complete_choice(self, request: Request, cache: bool = True) -> Completion:
        """Answer a ``choices`` request by ranking the choices with :meth:`score`."""
        assert request.choices is not None
        t0 = time.perf_counter()
        prompt = self.prompt_of(request)
        values = self.score(prompt, list(request.choices), cache=cache)
        best = max(range(len(values)), key=values.__getitem__)
        n_prompt = self.count_tokens(prompt)
        n_choice = sum(self.count_tokens(c) for c in request.choices)
        return Completion(
            samples=[Sample(text=request.choices[best], finish_reason="choice",
                            logprobs=[values[best]]) for _ in range(request.n)],
            usage=Usage(prompt_tokens=n_prompt + n_choice, completion_tokens=0),
            latency_s=time.perf_counter() - t0,
        )

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` (backends override; default ~4 characters a token)."""
        return max(1, len(text) // 4)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (model memory, connections)."""

    # ---- backend hooks --------------------------------------------------------------
    @abstractmethod
    def _complete(self, requests: list[Request]) -> list[Completion]:
        """Generate, uncached, one Completion per request (no ``choices`` requests)."""

    @abstractmethod
    def _score(self, prompt: str, continuations: list[str]) -> list[float]:
        """Summed log-probability of each continuation after ``prompt``, uncached."""
