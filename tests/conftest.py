"""Shared fixtures: a tiny random causal LM with a tokenizer trained on the spot (no downloads).

- ``tiny_lm``: ``(model, tokenizer)``, session-scoped. A 2-layer Llama (hidden 64, GQA 4/2 heads,
  vocab ~1000, window 512) with fixed-seed random weights, and a byte-level BPE tokenizer trained
  on a small built-in corpus, with ChatML special tokens and a chat template so
  ``apply_chat_template`` works. Builds in well under a second.
- ``make_engine(**overrides)``: a new ``LLMEngine`` on the tiny model (config fields as keywords).
- ``tiny_kernel``: a ``Kernel`` whose LLM core is an ``LLMEngine`` on the tiny model; shut down after
  the test. Other managers' tests reuse it.
- ``kernel``: a ``Kernel`` without a model (built lazily if a test chats) and with the hashing
  embedder, for the managers' plumbing tests; shut down after the test. A test module that needs
  other settings defines its own ``kernel`` fixture, which takes precedence.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

# The tiny model's ops are microseconds long: a second intra-op thread only adds synchronisation,
# and on a loaded 2-core machine that spin-waiting costs 10-100x. Results do not depend on it.
torch.set_num_threads(int(os.environ.get("AIOS_TEST_THREADS", "1")))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The kernel schedules agents that call a language model through system calls.",
    "Each agent asks a question, waits for the answer, and may call a tool or read memory.",
    "Round robin gives every request a time slice measured in generated tokens.",
    "Priority scheduling serves urgent requests first and ages the waiting ones.",
    "Shortest job first predicts how long an answer will be and runs short ones early.",
    "A suspended request keeps its key value cache so it resumes without recomputing.",
    "The weather in Paris is mild; in Oslo it is cold; in Cairo it is hot and dry.",
    "Numbers: one two three four five six seven eight nine ten eleven twelve 0 1 2 3 4 5 6 7 8 9.",
    "Tools: calculator, search, calendar, weather. Answer with JSON: {\"name\": \"x\", \"arguments\": {}}",
    "yes no maybe red green blue cat dog bird apple banana cherry north south east west",
    "You are a helpful assistant. Summarize the conversation. The user said hello and asked for help.",
]


def build_tiny_tokenizer(vocab_size: int = 1000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(tokenizer, seed: int = 0, window: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # wider logits than the default init so greedy/sampling choices are well separated
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_lm():
    tok = build_tiny_tokenizer()
    return build_tiny_model(tok), tok


@pytest.fixture
def make_engine(tiny_lm):
    from aios.kernel.engine import LLMEngine

    model, tok = tiny_lm
    engines = []

    def _make(**overrides):
        overrides.setdefault("max_batch_size", 8)
        eng = LLMEngine(model, tok, **overrides)
        engines.append(eng)
        return eng

    yield _make
    for eng in engines:
        eng.close()


@pytest.fixture
def tiny_kernel(tiny_lm, tmp_path):
    from _util import make_tiny_kernel

    kernel = make_tiny_kernel(tiny_lm, tmp_path / "data")
    yield kernel
    kernel.shutdown()


@pytest.fixture
def kernel(tmp_path):
    from _mgr_util import make_kernel

    k = make_kernel(tmp_path)
    yield k
    k.shutdown()
