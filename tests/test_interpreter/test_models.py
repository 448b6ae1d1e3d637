import time

import pytest
import torch
import transformers
from tiny import bpe_tokenizer, memorize, tag_token_tokenizer, tiny_model

from interpreter import Engine, models
from interpreter.models import EMBEDDED_MODEL, FP16_WEIGHTS, ModelNotFound, load_model, resolve_dtype


def test_unknown_hub_id_gives_one_clear_line():
    with pytest.raises(ModelNotFound) as info:
        load_model("nobody/no-such-model")
    message = str(info.value)
    assert "nobody/no-such-model" in message and "local path" in message and "\n" not in message


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(ModelNotFound, match="is not a model folder"):
        load_model(str(tmp_path / "missing"))


def _fake_gguf(monkeypatch, tmp_path):
    """Conversion from a fake GGUF: the tiny model and tokenizer stand in for the real ones."""
    gguf = tmp_path / "pkg" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("PASTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_embedded_gguf", lambda alias: gguf)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        classmethod(lambda cls, *a, **k: bpe_tokenizer()))
    real_model_loader = transformers.AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, path, **k: tiny_model() if "gguf_file" in k
                                    else real_model_loader(cls, path, **k)))


def test_conversion_killed_halfway_leaves_no_cache(monkeypatch, tmp_path):
    _fake_gguf(monkeypatch, tmp_path)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # as if the user hit ^C while the weights were being written

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        models.resolve(EMBEDDED_MODEL)
    cache = tmp_path / "cache"
    assert not (cache / EMBEDDED_MODEL).exists()
    assert list(cache.iterdir()) == []  # no temporary folder left behind either


def test_conversion_happens_once_then_loads_from_cache(monkeypatch, tmp_path, capsys):
    _fake_gguf(monkeypatch, tmp_path)
    path = models.resolve(EMBEDDED_MODEL)
    assert "converting" in capsys.readouterr().err
    assert (tmp_path / "cache" / EMBEDDED_MODEL / "config.json").exists()
    assert models.resolve(EMBEDDED_MODEL) == path
    assert "converting" not in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_loads_offline_and_speaks():
    start = time.time()
    model, tok = load_model(EMBEDDED_MODEL)
    ids = tok.apply_chat_template([{"role": "user", "content": "Name a color."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert time.time() - start < 120


FORKING = ('Tips:<promise topic="a" tokens="6"/><async> one two</async><promise topic="b" tokens="6"/>'
           "<async> three</async><sync/> done")


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="float16-weights needs fbgemm")
def test_a_model_decoded_in_float16_weights_forks_as_in_float32(tmp_path):
    tok = tag_token_tokenizer()
    memorize(tiny_model("llama", len(tok)), tok, "List", FORKING, steps=120).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tokenizer = load_model(str(tmp_path), dtype=FP16_WEIGHTS)
    assert isinstance(model.lm_head, torch.ao.nn.quantized.dynamic.Linear)  # the weights really are packed
    result = Engine(model, tokenizer).generate("List")
    assert result.stored == FORKING and result.threads == 2


def test_auto_dtype_follows_the_cpus_bf16_units(monkeypatch):
    monkeypatch.setattr(models, "native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"
    monkeypatch.setattr(models, "native_bf16", lambda: False)
    fbgemm = "fbgemm" in torch.backends.quantized.supported_engines
    assert resolve_dtype("auto", "cpu") == (FP16_WEIGHTS if fbgemm else "float32")
    assert resolve_dtype(None, "cpu") == "float32" and resolve_dtype("float32", "cpu") == "float32"


def test_bad_dtypes_are_named():
    with pytest.raises(ValueError, match="dtype must be one of .*not 'fp8'"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="float16-weights runs on an x86 CPU only"):
        resolve_dtype(FP16_WEIGHTS, "cuda")
