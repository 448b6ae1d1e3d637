import time

import pytest
import transformers
from tiny import bpe_tokenizer, tiny_model

from interpreter import models
from interpreter.models import EMBEDDED_MODEL, ModelNotFound, load_model


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
