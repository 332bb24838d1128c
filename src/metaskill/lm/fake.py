"""A scripted fake LM for tests and benchmarks of logic: no model, deterministic.

Example:
    >>> lm = ScriptedLM({"capital of France": "Paris"}, default="I don't know")
    >>> lm.complete([Request(prompt="What is the capital of France?")])[0].text
    'Paris'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from metaskill.core.hashing import stable_hash
from metaskill.core.types import Completion, Request, Sample, Usage
from metaskill.lm.adapters import ADAPTER_SEP
from metaskill.lm.base import LM
from metaskill.lm.cache import Cache

Responder = Callable[[str, Request], str]


class ScriptedLM(LM):
    """Answers from a script: a substring -> answer map, or a function of the prompt.

    Args:
        script: either a mapping whose first key found in the prompt gives the answer,
            or a function ``(prompt, request) -> text``.
        default: the answer when no key matches.
        scores: optional function ``(prompt, continuation) -> log-likelihood``; by default
            a continuation scores 0.0 if the script's answer starts with it, else -5.0.
        cache: optional cache.

    Attributes:
        calls: every prompt the backend was actually asked (cache hits excluded).
    """

    spec = "fake"
    constraints = frozenset({"json_schema", "grammar"})
    """Constrained requests get the scripted text unchanged (so tests can script a reply
    that breaks a schema); :meth:`LM.complete` still validates JSON-schema replies."""

    def __init__(
        self,
        script: Mapping[str, str] | Responder | None = None,
        default: str = "",
        scores: Callable[[str, str], float] | None = None,
        cache: Cache | None = None,
        adapted: ScriptedLM | None = None,
    ) -> None:
        super().__init__(cache=cache)
        self.script = script or {}
        self.default = default
        self._scores = scores
        self.adapted = adapted
        self.calls: list[str] = []

    @property
    def identity(self) -> dict[str, Any]:
        """Identity includes a hash of the script so different scripts don't share a cache."""
        tag = (
            stable_hash(sorted(self.script.items()))
            if isinstance(self.script, Mapping)
            else getattr(self.script, "__qualname__", "fn")
        )
        return {"backend": "fake", "script": tag, "default": self.default,
                "adapter": self.adapter}

    def with_adapter(self, adapter: str | Path | None) -> ScriptedLM:
        """The "trained" fake model: ``adapted`` (else the same script) behind
        ``fake+adapter:PATH``, so logic around adapters is testable without weights.

        Example:
            >>> lm = ScriptedLM(default="a", adapted=ScriptedLM(default="b"))
            >>> t = lm.with_adapter("runs/x")
            >>> t.spec, t.complete([Request(prompt="q")])[0].text
            ('fake+adapter:runs/x', 'b')
        """
        src = self.adapted or self
        if adapter is None:
            src = self
        lm = ScriptedLM(src.script, src.default, src._scores, cache=self.cache,
                        adapted=self.adapted)
        if adapter is not None:
            lm.spec = f"fake{ADAPTER_SEP}{adapter}"
        return lm

    def with_trained(self, peft_model: Any, checkpoint_dir: str | Path) -> ScriptedLM:
        """A checkpoint of the fake model in training: the adapted script, no cache."""
        lm = self.with_adapter(checkpoint_dir)
        lm.cache = None
        return lm

    def answer(self, prompt: str, request: Request) -> str:
        """The scripted answer for a prompt."""
        if callable(self.script):
            return self.script(prompt, request)
        for key, value in self.script.items():
            if key in prompt:
                return value
        return self.default

    def _complete(self, requests: list[Request]) -> list[Completion]:
        out = []
        for r in requests:
            prompt = self.prompt_of(r)
            self.calls.append(prompt)
            text = self.answer(prompt, r)
            for s in r.stop:
                if s and s in text:
                    text = text[: text.index(s)]
            text = text[: r.max_tokens * 8]
            out.append(
                Completion(
                    samples=[Sample(text=text) for _ in range(r.n)],
                    usage=Usage(
                        prompt_tokens=self.count_tokens(prompt),
                        completion_tokens=self.count_tokens(text) * r.n,
                    ),
                )
            )
        return out

    def _score(self, prompt: str, continuations: list[str]) -> list[float]:
        self.calls.append(prompt)
        if self._scores is not None:
            return [float(self._scores(prompt, c)) for c in continuations]
        ans = self.answer(prompt, Request(prompt=prompt)).strip().lower()
        return [0.0 if ans and ans.startswith(c.strip().lower()) else -5.0 for c in continuations]
