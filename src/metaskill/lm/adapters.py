"""LoRA adapters, an LM-layer concept: the ``+adapter:`` spec syntax, PEFT folders on
disk, and their export to a GGUF LoRA adapter for llama.cpp.

One place parses ``SPEC+adapter:PATH`` (:func:`split_adapter`); an LM with an adapter is
``lm.with_adapter(path)`` (:meth:`metaskill.lm.base.LM.with_adapter`), whatever the
backend. Training adapters is a method (:mod:`metaskill.methods.sft`); serving them is here.

The GGUF export follows llama.cpp's ``convert_lora_to_gguf.py`` conventions:

* metadata ``general.type = "adapter"``, ``general.architecture`` = the base model's
  (llama.cpp refuses an adapter whose architecture differs), ``adapter.type = "lora"``,
  ``adapter.lora.alpha`` (llama.cpp scales the update by alpha / rank, as PEFT does);
* for every adapted base tensor (e.g. ``blk.3.attn_q.weight``) two F32 tensors,
  ``blk.3.attn_q.weight.lora_a`` holding PEFT's ``lora_A`` (shape rank x in) and
  ``blk.3.attn_q.weight.lora_b`` holding ``lora_B`` (shape out x rank);
* llama-family q/k projections are stored in GGUF with llama.cpp's head permutation
  (transformers undoes it when it loads a GGUF), so ``lora_B`` of ``q_proj``/``k_proj`` gets
  the same row permutation.

Example:
    >>> export_gguf("runs/r1/adapter", base_gguf="SmolLM2.gguf")   # doctest: +SKIP
    PosixPath('runs/r1/adapter/adapter.gguf')
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metaskill.core.errors import MethodError, ModelNotFoundError
from metaskill.core.readers import read_json

GGUF_NAME = "adapter.gguf"
ADAPTER_SEP = "+adapter:"

# HF module name -> llama.cpp tensor name (llama-family blocks).
_MODULE_MAP = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def _permute_rows(w: Any, n_head: int) -> Any:
    """llama.cpp's q/k permutation (convert_hf_to_gguf.LlamaModel.permute) over rows."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


@contextlib.contextmanager
def _gguf_writer(out: Path, arch: str) -> Iterator[Any]:
    """A GGUFWriter to fill in the ``with`` body; written to a temp name, renamed on success."""
    import gguf

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)


def read_gguf_arch(gguf_path: str | Path) -> dict[str, Any]:
    """Architecture name and head counts of a GGUF model file."""
    from gguf import GGUFReader

    r = GGUFReader(str(gguf_path))

    def field(name: str) -> Any:
        f = r.fields.get(name)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        if f.types and f.types[0].name == "STRING":
            return bytes(v).decode()
        return v.tolist()[0]

    arch = field("general.architecture")
    return {"architecture": arch,
            "n_head": field(f"{arch}.attention.head_count"),
            "n_head_kv": field(f"{arch}.attention.head_count_kv")}


def adapter_meta(adapter_dir: str | Path) -> dict[str, Any]:
    """The ``metaskill_train.json`` written next to an adapter (empty dict if absent)."""
    p = Path(adapter_dir) / "metaskill_train.json"
    return read_json(p, "adapter notes", expect=dict) if p.exists() else {}


def export_gguf(
    adapter_dir: str | Path,
    out_path: str | Path | None = None,
    *,
    base_gguf: str | Path | None = None,
    architecture: str | None = None,
    n_head: int | None = None,
    n_head_kv: int | None = None,
) -> Path:
    """Write a PEFT LoRA adapter folder as a llama.cpp GGUF LoRA adapter.

    Args:
        adapter_dir: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        out_path: the .gguf to write (default ``adapter_dir/adapter.gguf``); written to a
            temp name and renamed.
        base_gguf: the base model's GGUF; its architecture and head counts are read from it.
            Defaults to the base recorded in ``metaskill_train.json``.
        architecture, n_head, n_head_kv: given explicitly instead of ``base_gguf``.

    Returns:
        The path of the written GGUF adapter.

    Raises:
        MethodError: an adapter that targets modules llama.cpp cannot adapt, or uses
            options (rslora, DoRA) whose scaling llama.cpp does not apply.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adir = Path(adapter_dir)
    cfg_path = adir / "adapter_config.json"
    if not cfg_path.exists():
        raise ModelNotFoundError(f"'{adir}' has no adapter_config.json; not a PEFT adapter.")
    cfg = read_json(cfg_path, "adapter config", expect=dict)
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise MethodError("GGUF export supports plain LoRA only (no rslora/DoRA): llama.cpp "
                          "scales by alpha/rank.")
    if architecture is None:
        noted = adapter_meta(adir).get("base")
        base = base_gguf or (noted.get("source") if isinstance(noted, dict) else None)
        if base is None or not str(base).endswith(".gguf"):
            raise MethodError(
                "export_gguf needs the base model's GGUF (base_gguf=...) or architecture="
                " and head counts; the adapter records no GGUF base."
            )
        a = read_gguf_arch(base)
        architecture = a["architecture"]
        n_head = n_head or a["n_head"]
        n_head_kv = n_head_kv or a["n_head_kv"]
    tensors = load_file(str(adir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        m = _KEY.search(key)
        if m is None or m.group(2) not in _MODULE_MAP:
            raise MethodError(f"cannot export adapter tensor '{key}' to GGUF: only llama-style "
                              f"block linears ({', '.join(_MODULE_MAP)}) are supported.")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        name = f"blk.{layer}.{_MODULE_MAP[module]}.weight"
        w = value.astype(np.float32)
        if ab == "B" and architecture == "llama" and module in ("q_proj", "k_proj"):
            heads = n_head if module == "q_proj" else (n_head_kv or n_head)
            if not heads:
                raise MethodError("head counts are needed to permute q/k LoRA for llama.cpp.")
            w = _permute_rows(w, int(heads))
        pairs.setdefault(name, {})[ab] = np.ascontiguousarray(w)

    out = Path(out_path) if out_path else adir / GGUF_NAME
    with _gguf_writer(out, architecture) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
        for name in sorted(pairs):
            if set(pairs[name]) != {"A", "B"}:
                raise MethodError(f"adapter tensor '{name}' lacks its lora_A or lora_B half.")
            writer.add_tensor(f"{name}.lora_a", pairs[name]["A"])
            writer.add_tensor(f"{name}.lora_b", pairs[name]["B"])
    return out


def dequantize_gguf(src: str | Path, dst: str | Path, *, dtype: str = "f32") -> Path:
    """Copy a GGUF model with every quantized tensor dequantized to F32 (or F16).

    transformers dequantizes a GGUF when it loads one, so the ``hf`` backend computes with
    the dequantized weights in fp32, while llama.cpp runs the quantized matmuls. Serving the
    dequantized copy with llama.cpp removes that difference: both backends then hold the
    same weights, which is how the adapter parity test tells export errors apart from
    quantization noise. Tensor names and layouts (including llama.cpp's q/k permutation)
    are kept, so a GGUF LoRA adapter exported for ``src`` applies to ``dst`` unchanged.

    Args:
        src: the quantized GGUF model.
        dst: the file to write (written to a temp name and renamed).
        dtype: ``"f32"`` (bit-identical to what transformers computes with) or ``"f16"``.

    Returns:
        ``dst``.

    Raises:
        InvalidParameterError: an unknown ``dtype``.
        ModelNotFoundError: ``src`` does not exist.

    Example:
        >>> dequantize_gguf("SmolLM2.Q4_1.gguf", "SmolLM2.f32.gguf")   # doctest: +SKIP
        PosixPath('SmolLM2.f32.gguf')
    """
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    from metaskill.core.errors import InvalidParameterError

    targets = {"f32": (np.float32, gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
               "f16": (np.float16, gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16)}
    if dtype not in targets:
        raise InvalidParameterError(f"dtype must be one of {sorted(targets)}, got {dtype!r}.")
    np_type, qtype, file_type = targets[dtype]
    if not Path(src).is_file():
        raise ModelNotFoundError(f"GGUF model file not found: {src}")
    reader = gguf.GGUFReader(str(src))
    arch = read_gguf_arch(src)["architecture"]
    out = Path(dst)
    with _gguf_writer(out, arch) as writer:
        for field in reader.fields.values():
            # GGUFWriter writes the architecture and the GGUF.* header fields itself.
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            if field.name == gguf.Keys.General.FILE_TYPE:
                writer.add_file_type(int(file_type))
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        for t in reader.tensors:
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                data = np.asarray(t.data)
                if t.tensor_type == gguf.GGMLQuantizationType.F32 or dtype == "f16":
                    writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
                    continue
                w = data.astype(np_type)
            else:
                w = dequantize(t.data, t.tensor_type).astype(np_type)
            # GGUF lists dims innermost first; numpy wants them outermost first.
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            writer.add_tensor(t.name, np.ascontiguousarray(w.reshape(shape)), raw_dtype=qtype)
    return out


# ---- the spec syntax and the model behind an LM -------------------------------------------
def split_adapter(spec: str) -> tuple[str, str | None]:
    """Split ``SPEC+adapter:ADAPTER`` into ``(SPEC, ADAPTER)`` (adapter None if absent).

    Example:
        >>> split_adapter("local+adapter:runs/a/adapter.gguf")
        ('local', 'runs/a/adapter.gguf')
        >>> split_adapter("hf:model")
        ('hf:model', None)
    """
    if ADAPTER_SEP in spec:
        base, adapter = spec.split(ADAPTER_SEP, 1)
        return base, adapter or None
    return spec, None


def base_model_path(lm: Any) -> str:
    """The model file/folder an LM runs, so the HF trainer can load the same weights.

    Understands the HF backend (``base_path``), llama.cpp backends (``model_path``/``path``
    attributes, or the ``gguf:PATH`` / ``local`` spec).

    Raises:
        MethodError: the LM has no local weights (an HTTP or fake backend).
    """
    from metaskill.lm.files import embedded_gguf_path

    for attr in ("base_path", "model_path", "path", "gguf_path"):
        v = getattr(lm, attr, None)
        if isinstance(v, (str, Path)) and str(v):
            return split_adapter(str(v))[0]
    spec = split_adapter(str(getattr(lm, "spec", "")))[0]
    if spec in ("local", "gguf:local", "hf:local"):
        return str(embedded_gguf_path())
    for prefix in ("gguf:", "hf:"):
        if spec.startswith(prefix):
            return spec[len(prefix):]
    raise MethodError(
        f"cannot tell which model file the LM '{spec}' runs; LoRA training needs a local GGUF "
        "or HF model (specs local, gguf:PATH or hf:PATH)."
    )


def adapter_spec(base_spec: str, adapter: str | Path) -> str:
    """The spec of ``base_spec``'s model plus an adapter.

    ``adapter`` is a training output folder (PEFT files, plus ``adapter.gguf`` for a GGUF
    base) or a file. The HF backend takes the PEFT folder; llama.cpp backends take the GGUF
    export inside it. An adapter already in ``base_spec`` is replaced.

    Example:
        >>> adapter_spec("local", "runs/a")
        'local+adapter:runs/a/adapter.gguf'
        >>> adapter_spec("hf:m+adapter:old", "runs/a")
        'hf:m+adapter:runs/a'
    """
    base = split_adapter(base_spec)[0]
    path = Path(adapter)
    if base.startswith("hf:"):
        return f"{base}{ADAPTER_SEP}{path}"
    if path.suffix != ".gguf":
        path = path / GGUF_NAME
    return f"{base}{ADAPTER_SEP}{path}"
