"""HF transformers backend: ``hf:PATH`` where PATH is an HF model folder or a GGUF file.

Used for training (LoRA) and for scoring with real token log-likelihoods. A GGUF file is
dequantized by transformers (``gguf_file=``) once, then saved as a plain HF copy under
``METASKILL_HOME/hf/<sha256 of the GGUF>/`` so that later loads skip the conversion
(about 13-20 s -> under a second on this machine). The GGUF-loaded model can only be saved
after its quantizer attribute and quantization config are cleared (they describe the
GGUF source, not the float weights we now hold).

Constrained replies (``Request.json_schema``, ``Request.grammar``) are enforced while decoding
with llguidance (the ``structured`` extra): a logits processor masks every token the grammar
would refuse. Without llguidance, :attr:`HFLM.constraints` is empty and a constrained request
is refused in one line that names the extra.

A PEFT LoRA adapter folder may be attached with ``hf:PATH+adapter:DIR`` (or the
``adapter=`` argument); its hash is part of :attr:`HFLM.identity`, so cached answers of the
base model and of base+adapter never mix.

Example:
    >>> lm = HFLM("/path/to/SmolLM2-135M-Instruct.Q4_1.gguf")        # doctest: +SKIP
    >>> lm.complete([Request(messages=[{"role": "user", "content": "Hi"}])])  # doctest: +SKIP
    >>> lm.score("The capital of France is", [" Paris", " Rome"])     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from metaskill.core.errors import (
    ContextOverflowError,
    InvalidParameterError,
    MetaskillError,
    MethodError,
    ModelNotFoundError,
)
from metaskill.core.settings import Settings
from metaskill.core.types import Completion, Message, Request, Sample, Usage
from metaskill.lm.adapters import ADAPTER_SEP, split_adapter
from metaskill.lm.base import LM
from metaskill.lm.cache import Cache
from metaskill.lm.files import embedded_gguf_path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_fingerprint(path: str | Path, full_hash_below: int = 64 << 20) -> str:
    """A hash of a model or adapter folder.

    Small files (configs, adapters) are hashed by content; large weight files by name, size
    and modification time, so fingerprinting a multi-GB folder stays instant.
    """
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        st = p.stat()
        h.update(str(p.relative_to(root)).encode())
        if st.st_size <= full_hash_below:
            h.update(file_sha256(p).encode())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def constraint_library_available() -> bool:
    """True when llguidance (the ``structured`` extra) can be imported.

    Example:
        >>> isinstance(constraint_library_available(), bool)
        True
    """
    return importlib.util.find_spec("llguidance") is not None


JSON_STYLE: Mapping[str, Any] = MappingProxyType({
    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True,
})
"""How llguidance writes JSON-schema replies: one space after ``,`` and ``:``, no other
whitespace (a small model otherwise pads with newlines); keywords it cannot enforce are
left to :meth:`LM.complete`'s validation. A schema's own ``x-guidance`` overrides these."""


def closed_objects(schema: Any) -> Any:
    """A copy of a JSON schema where objects with ``properties`` and no
    ``additionalProperties`` allow no other keys -- llama.cpp's rule, so both local
    backends give the same replies' shape (a small model otherwise invents keys).

    Example:
        >>> closed_objects({"type": "object", "properties": {"ok": {"type": "boolean"}}})
        {'type': 'object', 'properties': {'ok': {'type': 'boolean'}}, 'additionalProperties': False}
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {k: closed_objects(v) for k, v in out[key].items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(v) for v in out[key]]
    for key in ("items", "additionalProperties", "not", "if", "then", "else"):
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class GrammarMask:
    """A transformers logits processor that keeps only the tokens a grammar allows.

    It feeds each newly generated token to an llguidance matcher, then sets the logits of
    every token the matcher would refuse to -inf. It runs before temperature and top-p (a
    custom processor precedes generate's warpers), so sampling and greedy both pick among
    allowed tokens only. One instance serves one sequence (batch size 1).

    Args:
        matcher: a fresh ``llguidance.LLMatcher`` for this sequence.
        prompt_len: the number of prompt tokens in ``input_ids``.
        stop_ids: end-of-turn token ids, the only ones allowed if the matcher errs.

    Example:
        >>> mask = GrammarMask(matcher, prompt_len=12, stop_ids=[2])   # doctest: +SKIP
        >>> model.generate(..., logits_processor=LogitsProcessorList([mask]))  # doctest: +SKIP
    """

    def __init__(self, matcher: Any, prompt_len: int, stop_ids: Sequence[int]) -> None:
        self.matcher = matcher
        self.prompt_len = prompt_len
        self.stop_ids = list(stop_ids)
        self.consumed = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if scores.shape[0] != 1:
            raise MetaskillError("GrammarMask serves one sequence at a time (batch size 1).")
        for tok in input_ids[0, self.prompt_len + self.consumed:].tolist():
            self.matcher.consume_token(int(tok))
            self.consumed += 1
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        if self.matcher.is_error():  # cannot happen with a sound mask; end the reply cleanly
            allowed[[i for i in self.stop_ids if i < scores.shape[-1]]] = True
        else:
            bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()),
                                    dtype=torch.uint8)
            n = min(bias.numel(), scores.shape[-1])
            allowed[:n] = bias[:n].to(scores.device) > 0
        return scores.masked_fill(~allowed, float("-inf"))


def hf_copy_dir(gguf_path: str | Path, settings: Settings | None = None) -> Path:
    """Where the reusable HF copy of a GGUF file lives (keyed by the file's SHA-256)."""
    settings = settings or Settings.from_env()
    return settings.home / "hf" / file_sha256(gguf_path)


def _torch_dtype(name: str) -> Any:
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}[name]
    except KeyError:
        raise MetaskillError(
            f"unknown dtype '{name}'; use float32, bfloat16 or float16."
        ) from None


def load_hf_model(
    path: str | Path,
    *,
    settings: Settings | None = None,
    dtype: str = "float32",
    save_copy: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Load an HF causal LM and tokenizer from a folder or a GGUF file.

    For a GGUF file the reusable HF copy under ``METASKILL_HOME/hf/<sha256>/`` is used when
    present; otherwise the GGUF is dequantized and (with ``save_copy``) the copy is written
    atomically (to a temp folder, then renamed).

    Args:
        path: an HF model folder (with config.json) or a ``.gguf`` file.
        settings: where METASKILL_HOME is; read from the environment if None.
        dtype: float32 (default, right for CPU training), bfloat16 or float16.
        save_copy: write the HF copy of a GGUF file for faster later loads.
        log: called with a line when the slow first-use conversion starts and ends
            (transformers' own progress bars are off).

    Returns:
        ``(model, tokenizer, info)`` where info has ``source`` (the path), ``hash`` (of the
        GGUF file or folder), ``kind`` ("gguf" or "folder") and ``hf_dir`` (a folder that
        holds the same weights in HF format, when there is one).

    Raises:
        ModelNotFoundError: if the path does not exist or is not a model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metaskill.core.quiet import no_load_bars

    say = log or (lambda _line: None)
    with no_load_bars():  # transformers' own bars (conversion, loading, saving) stay off
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelNotFoundError(f"model path '{p}' does not exist; pass an HF folder or a "
                                     ".gguf file.")
        torch_dtype = _torch_dtype(dtype)
        if p.is_dir():
            if not (p / "config.json").exists():
                raise ModelNotFoundError(f"'{p}' has no config.json; it is not an HF model folder.")
            tok = AutoTokenizer.from_pretrained(p)
            model = AutoModelForCausalLM.from_pretrained(p, dtype=torch_dtype)
            info = {"source": str(p), "hash": folder_fingerprint(p), "kind": "folder",
                    "hf_dir": str(p)}
        elif p.suffix == ".gguf":
            digest = file_sha256(p)
            settings = settings or Settings.from_env()
            copy = settings.home / "hf" / digest
            info = {"source": str(p), "hash": digest, "kind": "gguf", "hf_dir": None}
            if (copy / "config.json").exists():
                tok = AutoTokenizer.from_pretrained(copy)
                model = AutoModelForCausalLM.from_pretrained(copy, dtype=torch_dtype)
                info["hf_dir"] = str(copy)
            else:
                say(f"converting {p.name} to an HF copy for training (first use only)")
                t0 = time.perf_counter()
                tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
                model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name,
                                                             dtype=torch_dtype)
                # The dequantized model still carries the GGUF quantizer; it refuses to save
                # (and would re-quantize on load) until both are cleared.
                model.hf_quantizer = None
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.is_quantized = False
                if save_copy:
                    _save_atomically(model, tok, copy)
                    info["hf_dir"] = str(copy)
                say(f"converted in {time.perf_counter() - t0:.0f} s; kept in {copy}")
        else:
            raise ModelNotFoundError(f"'{p}' is neither an HF model folder nor a .gguf file.")
    model.eval()
    return model, tok, info


def _save_atomically(model: Any, tok: Any, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class HFLM(LM):
    """A transformers causal LM (optionally with a PEFT LoRA adapter) behind the LM interface.

    Args:
        path: HF model folder or GGUF file; may end in ``+adapter:DIR``.
        adapter: a PEFT adapter folder (overrides one given in ``path``).
        settings: where the HF copy of a GGUF lives; read from the environment if None.
        cache: optional LM cache.
        dtype: float32 (default), bfloat16 or float16.
        threads: torch intra-op threads (None keeps torch's default).
        model, tokenizer: an already loaded model/tokenizer (e.g. right after training);
            ``path`` is then only the identity source.

    Example:
        >>> lm = HFLM("model.gguf+adapter:runs/r1/adapter")   # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        adapter: str | Path | None = None,
        settings: Settings | None = None,
        cache: Cache | None = None,
        dtype: str = "float32",
        threads: int | None = None,
        model: Any = None,
        tokenizer: Any = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cache=cache)
        base, spec_adapter = split_adapter(str(path))
        adapter = adapter if adapter is not None else spec_adapter
        if threads:
            import torch

            torch.set_num_threads(threads)
        if model is None:
            model, tokenizer, info = load_hf_model(base, settings=settings, dtype=dtype)
        self.base_path = base
        self.settings = settings
        self.info = info or {"source": base, "hash": "unknown", "kind": "given"}
        self.adapter_path: str | None = None
        self.adapter_hash: str | None = None
        if adapter is not None:
            from peft import PeftModel

            ap = Path(adapter).expanduser()
            if not (ap / "adapter_config.json").exists():
                raise ModelNotFoundError(
                    f"adapter folder '{ap}' has no adapter_config.json (a PEFT adapter is "
                    "expected; a .gguf adapter is for the local/gguf backend)."
                )
            model = PeftModel.from_pretrained(model, str(ap))
            model.eval()
            self.adapter_path = str(ap)
            self.adapter_hash = folder_fingerprint(ap)
        self.model = model
        self.tokenizer = tokenizer
        self.spec = f"hf:{base}" + (f"{ADAPTER_SEP}{self.adapter_path}" if adapter else "")
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        cfg = getattr(model, "config", None)
        self.context_window = getattr(cfg, "max_position_embeddings", None)
        self._eos_ids = self._stop_token_ids()
        self.constraints = (frozenset({"json_schema", "grammar"})
                            if constraint_library_available() else frozenset())
        self._ll_tokenizer: Any = None  # llguidance's view of the tokenizer, built once
        self._matchers: dict[tuple[str, str], Any] = {}  # compiled constraint -> matcher

    def with_adapter(self, adapter: str | Path | None) -> HFLM:
        """This model plus the PEFT adapter folder ``adapter`` (None: the bare base model)."""
        return HFLM(self.base_path, adapter=adapter, settings=self.settings, cache=self.cache)

    def with_trained(self, peft_model: Any, checkpoint_dir: str | Path) -> HFLM:
        """The model being trained, served as it is (no copy, no cache)."""
        return HFLM(self.base_path, model=peft_model, tokenizer=self.tokenizer,
                    settings=self.settings, cache=None, info=self.info)

    # ---- identity -------------------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        """Backend, model hash and adapter hash (everything that changes an answer)."""
        return {"backend": "hf", "model": self.info.get("hash"), "adapter": self.adapter_hash}

    @property
    def name(self) -> str:
        """Short name: the model file/folder name (plus the adapter folder name)."""
        n = f"hf:{Path(self.base_path).name}"
        return n + (f"+{Path(self.adapter_path).name}" if self.adapter_path else "")

    # ---- rendering ------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Message]) -> str:
        """Render with the tokenizer's chat template, ending at the assistant's turn."""
        if not self.chat:
            return super().render_chat(messages)
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        return str(self.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True
        ))

    def count_tokens(self, text: str) -> int:
        """Exact token count with the model's tokenizer."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _stop_token_ids(self) -> list[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        for t in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(ids)

    def _encode_prompt(self, prompt: str) -> list[int]:
        # The chat template already holds any special tokens; plain prompts get the
        # tokenizer's default BOS handling.
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    # ---- constraints --------------------------------------------------------------------
    def _check_constraints(self, reqs: Sequence[Request]) -> None:
        """Refuse a constrained request in one line naming the extra when llguidance is
        missing; otherwise as :meth:`LM._check_constraints`."""
        if not self.constraints and any(r.constrained for r in reqs):
            kind = next("json_schema" if r.json_schema is not None else "grammar"
                        for r in reqs if r.constrained)
            raise MethodError(
                f"the {self.spec} backend enforces a {kind} constraint only with llguidance; "
                "install the 'structured' extra (pip install 'metaskill[structured]') or drop "
                "the constraint.")
        super()._check_constraints(reqs)

    def _matcher(self, r: Request) -> Any:
        """A fresh llguidance matcher for a constrained request (None: unconstrained).

        The tokenizer is converted once per instance and each compiled constraint kept per
        instance; every sample gets its own copy of the compiled matcher.

        Raises:
            InvalidParameterError: the grammar or JSON schema does not compile.
        """
        if not r.constrained:
            return None
        import llguidance
        import llguidance.hf

        key = ("json_schema", r.json_schema) if r.json_schema is not None else (
            "gbnf", r.grammar or "")
        if key not in self._matchers:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer, eos_token=self._eos_ids or None)
            what = "JSON schema" if key[0] == "json_schema" else "grammar"
            try:
                if key[0] == "json_schema":
                    schema = json.dumps(closed_objects(json.loads(key[1])))
                    grammar = llguidance.LLMatcher.grammar_from_json_schema(
                        schema, dict(JSON_STYLE))
                else:
                    grammar = llguidance.grammar_from("gbnf", key[1])
            except ValueError as e:
                raise InvalidParameterError(
                    f"llguidance cannot compile the {what}: {str(e).splitlines()[0]}") from None
            m = llguidance.LLMatcher(self._ll_tokenizer, grammar, log_level=0)
            if m.is_error():
                raise InvalidParameterError(
                    f"llguidance cannot compile the {what}: "
                    f"{m.get_error().splitlines()[0]}")
            self._matchers[key] = m
        return self._matchers[key].deep_copy()

    # ---- backend hooks ----------------------------------------------------------------
    def _complete(self, requests: list[Request]) -> list[Completion]:
        import torch

        out: list[Completion] = []
        for r in requests:
            t0 = time.perf_counter()
            prompt = self.prompt_of(r)
            ids = self._encode_prompt(prompt)
            if self.context_window and len(ids) + 1 > self.context_window:
                raise ContextOverflowError(
                    f"prompt has {len(ids)} tokens but the context window is "
                    f"{self.context_window}; shorten the prompt or use fewer demonstrations."
                )
            max_new = r.max_tokens
            if self.context_window:
                max_new = min(max_new, self.context_window - len(ids))
            inp = torch.tensor([ids])
            samples: list[Sample] = []
            n_completion = 0
            for i in range(r.n):
                gen_kwargs: dict[str, Any] = {
                    "max_new_tokens": max_new,
                    "eos_token_id": self._eos_ids or None,
                    "pad_token_id": self.tokenizer.pad_token_id
                    if self.tokenizer.pad_token_id is not None else (self._eos_ids or [0])[0],
                }
                if r.temperature > 0:
                    torch.manual_seed(r.seed + i)
                    gen_kwargs.update(do_sample=True, temperature=r.temperature, top_p=r.top_p,
                                      top_k=0)
                else:
                    gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                if r.stop:
                    gen_kwargs.update(stop_strings=list(r.stop), tokenizer=self.tokenizer)
                matcher = self._matcher(r)
                if matcher is not None:
                    from transformers import LogitsProcessorList

                    gen_kwargs["logits_processor"] = LogitsProcessorList(
                        [GrammarMask(matcher, len(ids), self._eos_ids)])
                with torch.no_grad():
                    seq = self.model.generate(
                        input_ids=inp, attention_mask=torch.ones_like(inp), **gen_kwargs
                    )
                new = seq[0, len(ids):].tolist()
                finish = "length"
                if new and new[-1] in self._eos_ids:
                    new = new[:-1]
                    finish = "stop"
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                for s in r.stop:
                    if s and s in text:
                        text = text[: text.index(s)]
                        finish = "stop"
                n_completion += len(new)
                samples.append(Sample(text=text, finish_reason=finish))
            out.append(Completion(
                samples=samples,
                usage=Usage(prompt_tokens=len(ids), completion_tokens=n_completion),
                latency_s=time.perf_counter() - t0,
            ))
        return out

    def _score(self, prompt: str, continuations: list[str]) -> list[float]:
        import torch

        p_ids = self._encode_prompt(prompt)
        values: list[float] = []
        for cont in continuations:
            c_ids = list(self.tokenizer(cont, add_special_tokens=False)["input_ids"])
            if not c_ids:
                values.append(0.0)
                continue
            ids = p_ids + c_ids
            if self.context_window and len(ids) > self.context_window:
                raise ContextOverflowError(
                    f"prompt plus continuation has {len(ids)} tokens, more than the context "
                    f"window of {self.context_window}."
                )
            if not p_ids:  # nothing to condition the first token on: score from the 2nd
                ids = [self.tokenizer.bos_token_id or (self._eos_ids or [0])[0], *ids]
                start = 1
            else:
                start = len(p_ids)
            x = torch.tensor([ids])
            with torch.no_grad():
                logits = self.model(input_ids=x).logits[0].float()
            logp = torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1)
            target = torch.tensor(ids[start:])
            values.append(float(logp.gather(1, target[:, None]).sum()))
        return values

    def close(self) -> None:
        """Drop the model (frees its memory once no one else holds it)."""
        self.model = None


def load_hf(spec_rest: str, *, cache: Cache | None = None, settings: Settings | None = None,
            **kwargs: Any) -> HFLM:
    """Build an :class:`HFLM` from the part of a spec after ``hf:``.

    ``PATH`` or ``PATH+adapter:DIR``; ``PATH`` may be ``local`` (the embedded SmolLM2 GGUF).
    ``lora_path=`` (what :func:`metaskill.lm.spec.load_lm` passes for ``+adapter:``) is
    accepted as the adapter too, so ``load_lm`` can route ``hf:`` here in one line.
    """
    base, adapter = split_adapter(spec_rest)
    lora_path = kwargs.pop("lora_path", None)
    adapter = adapter or (str(lora_path) if lora_path else None)
    if base in ("", "local", "smollm2"):
        base = str(embedded_gguf_path())
    return HFLM(base, adapter=adapter, cache=cache, settings=settings, **kwargs)


def dump_info(lm: HFLM) -> str:
    """The backend's identity as one JSON line (for logs)."""
    return json.dumps({"spec": lm.spec, **lm.identity})
