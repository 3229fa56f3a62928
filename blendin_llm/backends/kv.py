"""Key/value caches for running many sequences through one forward pass of a transformers model.

Layout. A sequence's past lives either on its own (``RowKV``: one key and one value tensor per
layer, ``[1, heads, length, head_dim]``) or as a row of a batch (``Slot``). A ``KVBatch`` holds the
rows of one forward pass in preallocated buffers ``[rows, heads, capacity, head_dim]`` per layer,
right-aligned: every row's past ends at the same column, shorter rows are padded on the left, and
a 2-D attention mask marks the padding. The new tokens of a step go into the next columns, with
explicit position ids (each row counts its own tokens), which is how transformers' ``generate``
decodes a left-padded batch. Capacity is reserved ahead, so a decoding step writes its new
columns in place instead of concatenating the whole cache as ``DynamicCache`` does.

While the same rows keep stepping together, the batch is reused as it is (no copy). When the set of
rows changes (a request joins or ends, a row rolls back or runs a different number of tokens) a new
batch is built, copying each row's past once. Every layer keeps the whole past, sliding-window
layers too: the model's sliding-window mask applies the window over the columns, and a rollback is
a slice, never a recomputation. Rows that feed fewer tokens than others in the same pass are padded
on the left of their new tokens (masked); the past is then moved up against the new tokens, so
after every pass each row's columns are exactly its tokens and its attention is the same as alone.
Models with sliding-window layers pad only prompts (their window would count inner padding).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer


class RowKV:
    """One sequence's past on its own: ``keys[l]``/``values[l]`` are ``[1, heads, length, dim]``."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys, self.values = keys, values

    def crop(self, length: int) -> RowKV:
        return RowKV([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values])


class Slot:
    """Row ``index`` of ``batch``; valid while the batch's rows are exactly where they were."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: KVBatch, index: int) -> None:
        self.batch, self.index = batch, index

    def row(self) -> RowKV:
        """The row's past as views into the batch's buffers (no copy)."""
        b, i = self.batch, self.index
        start = b.used - b.lens[i]
        bufs = [layer.buffers() for layer in b.layers]
        return RowKV(
            [k[i : i + 1, :, start : b.used] for k, _ in bufs],
            [v[i : i + 1, :, start : b.used] for _, v in bufs],
        )


def own_row(cache: Any) -> RowKV | None:
    """A sequence's past as a ``RowKV`` (views), whatever holds it now."""
    return cache.row() if isinstance(cache, Slot) else cache


class _Layer(DynamicLayer):
    """One layer of a ``KVBatch``: preallocated buffers; ``update`` writes the step's new columns
    in place and returns the views the attention reads (every row's past and new tokens)."""

    is_sliding = False  # the whole past is kept; a sliding window is applied by the mask

    def __init__(self, batch: KVBatch, index: int) -> None:
        super().__init__()
        self.batch, self.index = batch, index
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate the buffers (shapes from the first new states) and copy the rows' pasts in."""
        b = self.batch
        n, heads, _, dim = key_states.shape
        shape = (n, heads, b.capacity, dim)
        self.buf_k = key_states.new_zeros(shape)
        self.buf_v = value_states.new_zeros(
            (n, value_states.shape[1], b.capacity, value_states.shape[-1])
        )
        for i, past in enumerate(b.pasts):
            if past is not None and b.lens[i]:
                start = b.used - b.lens[i]
                self.buf_k[i, :, start : b.used] = past.keys[self.index][0]
                self.buf_v[i, :, start : b.used] = past.values[self.index][0]
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers (allocated by the first forward pass)."""
        assert self.buf_k is not None and self.buf_v is not None
        return self.buf_k, self.buf_v

    def _grow(self) -> None:
        cap = self.batch.capacity
        for name in ("buf_k", "buf_v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], cap, old.shape[-1]))
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.buf_k is None:
            self.lazy_initialization(key_states, value_states)
        elif self.buf_k.shape[2] < self.batch.capacity:
            self._grow()
        buf_k, buf_v = self.buffers()
        start = self.batch.used
        end = start + key_states.shape[-2]
        buf_k[:, :, start:end] = key_states
        buf_v[:, :, start:end] = value_states
        self.keys, self.values = buf_k[:, :, :end], buf_v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.batch.used

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.batch.used + query_length, 0


class KVBatch:
    """Sequences that run forward passes together; see the module's docstring for the layout.

    Args:
        pasts: each row's past (``RowKV``, or None for a row that has none yet).
        lens: each row's past length.
        n_layers: the model's number of layers.
        device: where the mask lives.
        reserve: columns to reserve beyond the longest past (grown further when needed).
    """

    def __init__(
        self,
        pasts: list[RowKV | None],
        lens: list[int],
        n_layers: int,
        device: torch.device,
        reserve: int,
    ) -> None:
        self.pasts = pasts  # only until every layer copied them in (the first forward)
        self.lens = list(lens)
        self.used = max(lens) if lens else 0
        self.capacity = self.used + max(reserve, 1)
        n = len(lens)
        self.mask = torch.zeros((n, self.capacity), dtype=torch.long, device=device)
        for i, length in enumerate(lens):
            self.mask[i, self.used - length : self.used] = 1
        self.layers = [_Layer(self, i) for i in range(n_layers)]
        # (transformers annotates ``layers`` as a list of its base classes: list is invariant)
        self.cache = Cache(layers=self.layers)  # type: ignore[arg-type]

    def reserve(self, t: int) -> None:
        """Make room for ``t`` more columns (growing by half, so growth is amortised)."""
        need = self.used + t
        if need <= self.capacity:
            return
        self.capacity = max(need, self.capacity + self.capacity // 2 + 16)
        mask = self.mask.new_zeros((self.mask.shape[0], self.capacity))
        mask[:, : self.mask.shape[1]] = self.mask
        self.mask = mask

    def forward(
        self, model: Any, ids: list[list[int]], n_last: int, holes: bool = False
    ) -> torch.Tensor:
        """Run every row on its ``ids``; float32 logits of the last ``n_last`` positions
        ``[rows, n_last, width]`` (a row's own are the last of its tokens it asked for).

        Rows that feed fewer tokens than the longest are padded on the left of their new tokens,
        with the padding masked: for a row without a past this is transformers' left-padded
        prompt; for a row with one (``holes``: only for models without sliding-window layers,
        whose window would count the padding) the padding sits between its past and its new
        tokens, and the row's past is moved up to its new tokens after the pass, so no hole
        stays."""
        news = [len(x) for x in ids]
        t = max(news)
        ragged = any(n != t for n in news)
        if ragged and not holes and any(self.lens):
            raise ValueError("rows with a past must feed the same number of tokens")
        self.reserve(t)
        device = self.mask.device
        end = self.used + t
        if ragged:  # left padding of the new tokens; positions continue each row's own count
            for i, n in enumerate(news):
                self.mask[i, end - n : end] = 1
            positions = torch.tensor(
                [
                    [length] * (t - n) + list(range(length, length + n))
                    for length, n in zip(self.lens, news)
                ],
                dtype=torch.long,
                device=device,
            )
            ids = [[x[0]] * (t - len(x)) + x for x in ids]
        else:
            self.mask[:, self.used : end] = 1
            lens = torch.tensor(self.lens, dtype=torch.long, device=device)
            positions = lens[:, None] + torch.arange(t, device=device)
        padded = ragged or any(length < self.used for length in self.lens)
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device),
            attention_mask=self.mask[:, :end] if padded else None,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=n_last,
        )
        self.pasts = []
        if ragged:
            self._close_holes(news, t)
        self.used = end
        self.lens = [length + n for length, n in zip(self.lens, news)]
        return out.logits[:, -n_last:].float()

    def _close_holes(self, news: list[int], t: int) -> None:
        """Move each padded row's past up against its new tokens (before ``used`` advances)."""
        for i, (length, n) in enumerate(zip(self.lens, news)):
            gap = t - n
            if not gap or not length:
                continue
            start = self.used - length
            for layer in self.layers:
                for buf in layer.buffers():
                    buf[i, :, start + gap : self.used + gap] = buf[i, :, start : self.used].clone()
            self.mask[i, start : start + gap] = 0
            self.mask[i, start + gap : self.used + gap] = 1


class PrefixCache:
    """Pasts of recent prompts, so a prompt that starts like one of them (a system prompt,
    few-shot exemplars, a RAG template) skips computing the shared part; a prompt seen before as it
    is skips its forward pass altogether (its next-token logits are kept too). Least recently used
    entries go first once more than ``max_tokens`` tokens are kept.

    Entries are copies: a batch writes into its own buffers only, never into an entry. A prompt
    computed in two parts (cached prefix + the rest) gives the same logits as one computed at once
    up to float rounding (about 1e-7 relative in float32); a repeated prompt gives the same bits.
    """

    def __init__(self, max_tokens: int = 4096, min_tokens: int = 8) -> None:
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[RowKV, torch.Tensor | None]] = (
            OrderedDict()
        )
        self._tokens = 0
        self.hits = 0  # prompt tokens served from the cache
        self.misses = 0  # prompt tokens computed

    def lookup(
        self, ids: list[int], n_last: int = 1
    ) -> tuple[int, RowKV | None, torch.Tensor | None]:
        """(how many leading tokens of ``ids`` are cached, their past (views), and the next-token
        logits when all of ``ids`` is a cached prompt and ``n_last == 1``). Otherwise at least
        ``n_last`` tokens are left to run."""
        key = tuple(ids)
        hit = self._entries.get(key)
        if hit is not None and n_last == 1 and hit[1] is not None:
            self._entries.move_to_end(key)
            self.hits += len(ids)
            return len(ids), hit[0], hit[1]
        best, found = 0, None
        limit = len(ids) - n_last
        for k in self._entries:
            n = 0
            for a, b in zip(k, ids[:limit]):
                if a != b:
                    break
                n += 1
            if n > best:
                best, found = n, k
        if found is None or best < self.min_tokens:
            return 0, None, None
        self._entries.move_to_end(found)
        self.hits += best
        return best, self._entries[found][0].crop(best), None

    def store(
        self, ids: list[int], row: RowKV, logits: torch.Tensor | None, computed: int = 0
    ) -> None:
        """Keep the past of prompt ``ids`` (copied) and its next-token ``logits``."""
        self.misses += computed
        if self.max_tokens <= 0 or len(ids) < self.min_tokens or len(ids) > self.max_tokens:
            return
        key = tuple(ids)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = (
            RowKV([k.clone() for k in row.keys], [v.clone() for v in row.values]),
            None if logits is None else logits.clone(),
        )
        self._tokens += len(key)
        while self._tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._tokens -= len(old)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0
