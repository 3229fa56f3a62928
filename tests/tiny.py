"""Tiny models and tokenizers built from configs, for tests and benchmarks (nothing downloaded)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog. ",
    "User: hello there\nAssistant: Hi! How can I help you today?\n",
    "Question: what is 12 + 30? Answer: 42. The answer is 42.\n",
    "naïve café 東京 😀 ümlaut — ellipsis… numbers 12345 and 3.14, STOP here END.\n",
    "I cannot help with that. Sure, here is a short poem about the sea and the sky.\n",
]
SPECIALS = ["<eos>", "<bos>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(vocab_size: int = 400, chat: bool = False, corpus=CORPUS):
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tk.train_from_iterator(corpus * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", bos_token="<bos>",
                                  pad_token="<eos>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(tokenizer, seed: int, hidden: int = 32, layers: int = 2, init: float = 0.5,
               eos_token_id=None, width: int | None = None):
    cfg = LlamaConfig(
        vocab_size=width or len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, initializer_range=init,
        eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def make_char_tokenizer():
    """One token per printable ASCII character and no merges: every text has exactly one
    tokenization, so any token sequence a model emits is the canonical one."""
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(["<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


def make_sentencepiece_tokenizer(vocab_size: int = 500, corpus=CORPUS):
    """A SentencePiece-style tokenizer (Metaspace '▁' words, byte fallback), unlike the byte-level
    BPE of make_tokenizer: the pair needs cross-vocabulary blending."""
    import json

    tk = Tokenizer(models.BPE(byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<bos>"],
                                  show_progress=False)
    tk.train_from_iterator(corpus * 20, trainer)
    model = json.loads(tk.to_str())["model"]
    # as in SentencePiece models, the byte-fallback tokens come first, right after the specials
    vocab = {"<eos>": 0, "<bos>": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    for t in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    sp = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    sp.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                    decoders.Fuse()])
    sp.add_special_tokens(["<eos>", "<bos>"])
    return PreTrainedTokenizerFast(tokenizer_object=sp, eos_token="<eos>", bos_token="<bos>",
                                   pad_token="<eos>")
