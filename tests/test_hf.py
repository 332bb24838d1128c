"""The hf backend: spec parsing, fingerprints, GGUF -> reusable HF copy, complete, score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaskill.core.errors import ModelNotFoundError
from metaskill.core.settings import Settings
from metaskill.lm.hf import folder_fingerprint, split_adapter


def test_split_adapter() -> None:
    assert split_adapter("/m/model.gguf") == ("/m/model.gguf", None)
    assert split_adapter("/m/model.gguf+adapter:/a/b") == ("/m/model.gguf", "/a/b")


def test_folder_fingerprint_follows_content(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    a = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == a
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    assert folder_fingerprint(tmp_path) != a


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from metaskill.lm.hf import HFLM, load_hf_model

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_hf_model(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load_hf_model(tmp_path)
    (tmp_path / "x.bin").write_text("x")
    with pytest.raises(ModelNotFoundError, match=r"neither an HF model folder nor a \.gguf"):
        load_hf_model(tmp_path / "x.bin")
    with pytest.raises(ModelNotFoundError, match=r"no adapter_config\.json"):
        HFLM("unused", adapter=tmp_path, model=object(), tokenizer=_FakeTok())


class _FakeTok:
    chat_template = None
    eos_token_id = 0
    unk_token_id = None

    def convert_tokens_to_ids(self, t: str) -> int:
        return -1


@pytest.mark.slow
def test_gguf_load_saves_copy_then_completes_and_scores(tmp_path: Path) -> None:
    """First load dequantizes the GGUF and saves an HF copy (no quantization config);
    the second load uses the copy. Greedy chat answers and log-likelihoods are real."""
    pytest.importorskip("transformers")
    from metaskill.core.types import Request
    from metaskill.lm.files import embedded_gguf_path
    from metaskill.lm.hf import HFLM, hf_copy_dir

    try:
        gguf = embedded_gguf_path()
    except ModelNotFoundError:
        pytest.skip("embedded model not installed")
    settings = Settings(home=tmp_path)
    lm = HFLM(gguf, settings=settings)
    copy = hf_copy_dir(gguf, settings)
    assert (copy / "config.json").exists()
    assert "quantization_config" not in json.loads((copy / "config.json").read_text())
    assert lm.info["kind"] == "gguf" and lm.identity["adapter"] is None

    again = HFLM(gguf, settings=settings)
    assert again.info["hf_dir"] == str(copy)
    ask = Request(messages=[{"role": "user", "content": "What is the capital of France?"}],
                  max_tokens=12)
    a, b = lm.complete([ask], cache=False)[0], again.complete([ask], cache=False)[0]
    assert "Paris" in a.text and a.text == b.text
    assert a.usage.completion_tokens > 0 and a.finish_reason == "stop"
    paris, rome = lm.score("The capital of France is", [" Paris", " Rome"], cache=False)
    assert paris > rome and paris < 0
    # Chat rendering comes from the model's own template.
    assert lm.render_chat(ask.messages).endswith("<|im_start|>assistant\n")
    # The folder form of the spec loads the copy directly, with the same answers.
    folder = HFLM(copy)
    assert folder.complete([ask], cache=False)[0].text == a.text
