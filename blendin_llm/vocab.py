"""Blending across vocabularies.

Two pieces, both built once per (guide, base) pair:

* ``VocabMap`` carries a guide's next-token distribution into the base's token space. Every guide
  token goes to exactly one base token, so no probability mass is ever dropped:
    1. a base token whose bytes are identical (``" the"`` <- ``"Ġthe"`` / ``"▁the"``);
    2. otherwise the base token whose bytes are the longest prefix of the guide token's bytes
       (what the base would most likely start that text with; byte-fallback vocabularies always have
       one), else the first token of the base's own tokenization of that text;
    3. special tokens go to the base's special token with the same text, else to the base's EOS.
  ``VocabMap.reading`` also reads committed text the way the guide would write it (its most
  likely token for the text's start), which is how a cross-vocabulary guide keeps its own tokens.
* ``IncrementalTokenizer`` keeps the base's own tokenization of the committed answer text up to date (once
  a guide has changed a choice, the base re-reads the answer in its own tokens): it re-tokenizes
  only a short tail starting at a stable token boundary, and reports how far the KV cache must be
  rolled back (never the whole text).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from functools import lru_cache
from typing import Any

import torch

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_TINY = 1e-30


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: printable stand-in character -> byte."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_types(tokenizer: Any) -> set[str | None]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    dec = json.loads(backend.to_str()).get("decoder") or {}
    types, stack = set(), [dec]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            types.add(d.get("type"))
            stack.extend(d.get("decoders") or [])
    return types


def token_bytes(tokenizer: Any) -> tuple[list[bytes | None], dict[int, str]]:
    """Bytes of every token id (None where the id has no token), and the special tokens' texts."""
    vocab = tokenizer.get_vocab()
    width = max(vocab.values()) + 1
    out: list[bytes | None] = [None] * width
    byte_level = "ByteLevel" in _decoder_types(tokenizer)
    bd = _byte_decoder()
    specials = {
        i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special
    }
    specials.update({i: tokenizer.convert_ids_to_tokens(i) for i in tokenizer.all_special_ids})
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    for tok, i in vocab.items():
        if i in specials:
            continue
        if i in added:
            out[i] = added[i].encode()
        elif byte_level and all(c in bd for c in tok):
            out[i] = bytes(bd[c] for c in tok)
        elif (m := _BYTE_TOKEN.fullmatch(tok)) is not None:
            out[i] = bytes([int(m.group(1), 16)])
        else:
            out[i] = tok.replace("\u2581", " ").encode()
    return out, specials


def complete_utf8(data: bytes) -> bool:
    """Whether ``data`` does not end inside a UTF-8 character (looks at its last 4 bytes)."""
    for k in range(1, min(4, len(data)) + 1):
        c = data[-k]
        if c & 0xC0 != 0x80:  # ASCII or the lead byte of the last character
            return k >= (1 if c < 0x80 else 2 if c < 0xE0 else 3 if c < 0xF0 else 4)
    return True  # no lead byte in sight: not a character we could complete


def byte_fallback_ids(tokenizer: Any) -> list[int]:
    """Ids of the ``<0xNN>`` byte tokens of a SentencePiece-style vocabulary."""
    return [i for t, i in tokenizer.get_vocab().items() if _BYTE_TOKEN.fullmatch(t)]


def vocab_fingerprint(tokenizer: Any) -> str:
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


class VocabMap:
    """Guide token id -> base token id, with the counts of how each was matched."""

    def __init__(
        self, guide_tokenizer: Any, base_tokenizer: Any, base_eos: int, guide_width: int
    ) -> None:
        g_bytes, g_special = token_bytes(guide_tokenizer)
        b_bytes, b_special = token_bytes(base_tokenizer)
        byte_fallback = set(byte_fallback_ids(base_tokenizer))
        index: dict[bytes, int] = {}
        for i, b in enumerate(b_bytes):  # a normal token wins over a byte-fallback token
            if b and (b not in index or index[b] in byte_fallback and i not in byte_fallback):
                index[b] = i
        self._index = index
        self._longest = max(map(len, index), default=1)
        self._base_tokenizer = base_tokenizer
        self._eos = base_eos
        special_index = {text: i for i, text in b_special.items()}
        mapping = [base_eos] * max(guide_width, len(g_bytes))
        self.exact = self.prefix = self.retokenized = self.special = 0
        for g, b in enumerate(g_bytes):
            if g in g_special:
                mapping[g] = special_index.get(g_special[g], base_eos)
                self.special += 1
            elif b:  # (an id with no token, padding, keeps the EOS placeholder: it gets no mass)
                mapping[g], how = self.base_token_for(b)
                setattr(self, how, getattr(self, how) + 1)
        self.guide_to_base = torch.tensor(mapping, dtype=torch.long)
        self.base_bytes = b_bytes  # bytes of each base token (None: special or no token)
        # guide tokens sorted by bytes, to find every token that extends a given text (a range)
        self._g_bytes = g_bytes
        ranked = sorted((b, i) for i, b in enumerate(g_bytes) if b and i not in g_special)
        self._sorted_bytes = [b for b, _ in ranked]
        self._sorted_ids = [i for _, i in ranked]
        self._sorted_ids_t = torch.tensor(self._sorted_ids, dtype=torch.long)
        self._continuations: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._extensions: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        # the guide's own token for a text, to read committed text the way the guide writes it
        g_fallback = set(byte_fallback_ids(guide_tokenizer))
        g_index: dict[bytes, int] = {}
        for i, b in enumerate(g_bytes):
            if (
                b
                and i not in g_special
                and (b not in g_index or g_index[b] in g_fallback and i not in g_fallback)
            ):
                g_index[b] = i
        self._g_index = g_index
        self._g_longest = max(map(len, g_index), default=1)

    def base_token_for(self, b: bytes) -> tuple[int, str]:
        """The base token for a guide text: identical bytes, else the longest base prefix, else
        the first token of the base's own tokenization. Returns (id, how)."""
        hit = self._index.get(b)
        if hit is not None:
            return hit, "exact"
        for n in range(min(len(b) - 1, self._longest), 0, -1):
            hit = self._index.get(b[:n])
            if hit is not None:
                return hit, "prefix"
        ids = self._base_tokenizer(b.decode("utf-8", "replace"), add_special_tokens=False)[
            "input_ids"
        ]
        return (ids[0] if ids else self._eos), "retokenized"

    def continuations(self, guide_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Guide tokens that strictly extend ``guide_id``'s text, and the base token of what each
        adds to it. Built once per guide token."""
        got = self._continuations.get(guide_id)
        if got is None:
            s = self._g_bytes[guide_id] or b""
            lo = bisect.bisect_right(self._sorted_bytes, s)
            ids, base = [], []
            for k in range(lo, len(self._sorted_bytes)):
                b = self._sorted_bytes[k]
                if not b.startswith(s):
                    break
                ids.append(self._sorted_ids[k])
                base.append(self.base_token_for(b[len(s) :])[0])
            dev = self.guide_to_base.device
            got = (
                torch.tensor(ids, dtype=torch.long, device=dev),
                torch.tensor(base, dtype=torch.long, device=dev),
            )
            self._continuations[guide_id] = got
        return got

    def guide_token(self, text: bytes) -> int | None:
        """The guide's token whose bytes are exactly ``text``, or None."""
        return self._g_index.get(text)

    def _extension_range(self, text: bytes) -> tuple[int, int]:
        """[lo, hi) of the guide tokens (sorted by bytes) that strictly extend ``text``."""
        lo = bisect.bisect_right(self._sorted_bytes, text)
        head = text.rstrip(b"\xff")
        if not head:
            return lo, len(self._sorted_bytes)
        upper = head[:-1] + bytes([head[-1] + 1])  # the first text that does not start with it
        return lo, bisect.bisect_left(self._sorted_bytes, upper, lo)

    def reading(self, probs: torch.Tensor, text: bytes) -> tuple[int, bool]:
        """The guide's most likely first token for committed ``text``, by its distribution
        ``probs`` [guide width] at that point: the most probable guide token that is a prefix of
        the text (or the whole of it) or extends it. Returns (token, whether it extends the text:
        then the text ends inside the guide's token).

        This is how the guide itself would have written the text. Its re-tokenization from scratch
        can differ (SmolLM2 writes a blank line as ``"\\n"`` + ``"\\n"`` and then a code fence;
        after the single token ``"\\n\\n"``, which it rarely writes itself, it continues
        differently), so following it is what keeps ``guide_only`` on the guide's own answer."""
        ids = [
            i
            for n in range(1, min(len(text), self._g_longest) + 1)
            if (i := self._g_index.get(text[:n])) is not None
        ]
        lo, hi = self._extension_range(text)
        best_p, best = -1.0, None
        if ids:
            p, k = probs[torch.tensor(ids, device=probs.device)].max(0)
            best_p, best = float(p), ids[int(k)]
        if hi > lo:
            ext = self._sorted_ids_t[lo:hi]
            p, k = probs[ext].max(0)
            if float(p) > best_p:
                return int(ext[int(k)]), True
        if best is None:  # no guide token covers the text's first byte (not byte-level)
            return -1, False
        return best, False

    def project_extensions(self, probs: torch.Tensor, text: bytes, base_width: int) -> torch.Tensor:
        """The guide's next-text distribution in base space when the committed text ends inside
        a guide token and no guide token is exactly the text: each guide token t that extends the
        text gives its probability (renormalised over those tokens) to the base token of what it
        adds."""
        got = self._extensions.get(text)
        if got is None:
            lo, hi = self._extension_range(text)
            ids = self._sorted_ids_t[lo:hi]
            targets = [
                self.base_token_for(self._sorted_bytes[k][len(text) :])[0] for k in range(lo, hi)
            ]
            dev = self.guide_to_base.device
            got = (ids.to(dev), torch.tensor(targets, dtype=torch.long, device=dev))
            if len(self._extensions) > 4096:
                self._extensions.clear()
            self._extensions[text] = got
        ids, base = got
        mass = probs[ids]
        out = torch.zeros(base_width, dtype=probs.dtype, device=probs.device)
        out.index_add_(0, base, mass)
        return out / mass.sum().clamp_min(_TINY)

    def to(self, device: torch.device) -> VocabMap:
        if self.guide_to_base.device != torch.device(device):
            self.guide_to_base = self.guide_to_base.to(device)
            self._sorted_ids_t = self._sorted_ids_t.to(device)
            self._continuations.clear()
            self._extensions.clear()
        return self

    def project(self, guide_probs: torch.Tensor, base_width: int) -> torch.Tensor:
        """A guide distribution [guide width] as a distribution over the base's ids [base width]."""
        n = guide_probs.shape[0]
        out = torch.zeros(base_width, dtype=guide_probs.dtype, device=guide_probs.device)
        return out.index_add_(0, self.guide_to_base[:n], guide_probs)

    def project_healed(
        self, before: torch.Tensor, after: torch.Tensor, last: int, base_width: int
    ) -> torch.Tensor:
        """The guide's next-text distribution in base space, marginalised over its last token.

        ``before`` is the guide's distribution for its last token ``last`` (whose text s ends the
        answer), ``after`` its distribution for the token after it. A guide never writes ``'`` alone
        when it means ``'s``: the text's tokenization ending in s is one way to continue; every
        guide token t that extends s is another, whose remainder is the next text. So

            P(next) = [ before[s] * after(next) + sum_t before[t] * [next = base(t minus s)] ] / Z

        with Z = before[s] + sum_t before[t]. Without extensions this is ``project(after)``.
        """
        ids, base = self.continuations(last)
        projected = self.project(after, base_width)
        if ids.numel() == 0:
            return projected
        ext = before[ids]
        z = before[last] + ext.sum()
        if z <= 0:
            return projected
        out = projected * before[last]
        out.index_add_(0, base, ext)
        return out / z

    def stats(self) -> dict[str, int]:
        return {
            "exact": self.exact,
            "prefix": self.prefix,
            "retokenized": self.retokenized,
            "special": self.special,
        }


_MAPS: dict[tuple[str, str, int], VocabMap] = {}


def vocab_map(guide: Any, base: Any) -> VocabMap:
    """The VocabMap of a (guide, base) pair of backends, built once per pair of vocabularies."""
    eos = min(base.eos_token_ids) if base.eos_token_ids else 0
    key = (vocab_fingerprint(guide.tokenizer), vocab_fingerprint(base.tokenizer), eos)
    if key not in _MAPS:
        _MAPS[key] = VocabMap(guide.tokenizer, base.tokenizer, eos, guide.logits_width)
    return _MAPS[key].to(base.device)


def common_prefix(a: list[int], b: list[int], start: int = 0, offset: int = 0) -> int:
    """How many items ``a[offset:]`` and ``b`` share from the front (known equal up to start)."""
    n = min(len(a) - offset, len(b))
    k = start
    while k < n and a[offset + k] == b[k]:
        k += 1
    return k


class IncrementalTokenizer:
    """A tokenizer's tokenization of a growing text (the answer), brought up to date
    incrementally: the base's own reading of the answer after a cross-vocabulary guide changed a
    choice (``Generation._heal``).

    ``update(text)`` re-tokenizes ``text`` from a stable boundary at least ``back`` tokens before
    the end (a token boundary whose text both neighbours agree on) and returns the number of leading
    answer tokens that are unchanged. Appending text never changes tokens before that boundary in
    practice; where re-tokenizing the tail does not reproduce the tail's text, the whole answer is
    re-tokenized instead, so the result is always a faithful tokenization of ``text``.
    """

    __slots__ = ("tokenizer", "ids", "ends", "text", "back", "full_encodes")

    def __init__(self, tokenizer: Any, back: int = 4) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.ends: list[int] = []  # character offset where each token's text ends
        self.text = ""
        self.back = back
        self.full_encodes = 0

    def _encode(self, text: str, offset: int) -> tuple[list[int], list[int]] | None:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
        ends = [offset + e for _, e in spans]
        for k in range(1, len(spans)):
            if spans[k][0] < spans[k - 1][1]:  # a character split across tokens: keep as is
                ends[k - 1] = -1
        if self.tokenizer.decode(ids) != text:
            return None
        return ids, ends

    def update(self, text: str) -> int:
        """Bring the tokenization up to ``text`` (which extends the previous text); return how many
        leading tokens are unchanged."""
        if text == self.text:
            return len(self.ids)
        # back off to a clean boundary; a text that does not extend the last one starts afresh
        j = max(0, len(self.ids) - self.back) if text.startswith(self.text) else 0
        while j > 0 and self.ends[j - 1] < 0:
            j -= 1
        start = self.ends[j - 1] if j else 0
        enc = self._encode(text[start:], start)
        if enc is None and start:  # the tail did not re-tokenize faithfully: encode everything
            self.full_encodes += 1
            j, start = 0, 0
            enc = self._encode(text, 0)
        if enc is None:  # a tokenizer that normalizes text: take its tokens as they are
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            enc = ids, [-1] * len(ids)
        ids, ends = enc
        new_ids = self.ids[:j] + ids
        keep = common_prefix(self.ids, new_ids, j)
        self.ids = new_ids
        self.ends = self.ends[:j] + ends
        self.text = text
        return keep
