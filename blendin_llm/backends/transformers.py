"""In-process backend over a transformers causal LM with a DynamicCache per sequence."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from ..config import ModelSpec
from ..errors import ModelLoadError
from .base import ModelBackend, SequenceState
from .cpu import auto_cpu_dtype
from .kv import KVBatch, PrefixCache, Slot, own_row

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_id_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


_bars_lock = threading.Lock()
_bars_quiet = 0  # loads in progress that turned transformers' progress bars off
_bars_were_on = False


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off while at least one load runs, then as they were."""
    from transformers.utils import logging as hf_logging

    global _bars_quiet, _bars_were_on
    with _bars_lock:
        if _bars_quiet == 0:
            _bars_were_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        _bars_quiet += 1
    try:
        yield
    finally:
        with _bars_lock:
            _bars_quiet -= 1
            if _bars_quiet == 0 and _bars_were_on:
                hf_logging.enable_progress_bar()


class TransformersBackend(ModelBackend):
    """A transformers ``PreTrainedModel`` + tokenizer. Build it from a ModelSpec with ``load``."""

    def __init__(self, model: Any, tokenizer: Any, spec: ModelSpec | None = None) -> None:
        if spec is None:
            spec = ModelSpec(
                source=getattr(model, "name_or_path", "") or type(model).__name__,
                model=model,
                tokenizer=tokenizer,
            )
        if not spec.source and not spec.name:
            label = getattr(model, "name_or_path", "") or type(model).__name__
            spec = spec.replace(name=label)
        self.spec = spec
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        self._config = getattr(cfg, "get_text_config", lambda: cfg)()
        gen = getattr(model, "generation_config", None)
        self._eos = frozenset(
            _as_id_set(getattr(gen, "eos_token_id", None)) | _as_id_set(tokenizer.eos_token_id)
        )
        self._width = int(model.get_output_embeddings().weight.shape[0])
        self._n_tokens = self._check_sizes(model, tokenizer)
        self._n_layers = int(self._config.num_hidden_layers)
        # sliding-window layers count masked padding inside their window: no padding there
        types = getattr(self._config, "layer_types", None) or ()
        self._sliding = bool(getattr(self._config, "sliding_window", None)) and (
            not types or any("sliding" in str(x) for x in types)
        )
        # pasts of recent prompts (``PrefixCache``); None turns it off
        self.prefix_cache: PrefixCache | None = PrefixCache()

    def _check_sizes(self, model: Any, tokenizer: Any) -> int:
        """The tokenizer's size. A model whose embedding or logits have fewer rows than the
        tokenizer has ids would fail with an IndexError on the first such token: refuse it now.
        A tokenizer smaller than the model is allowed (embeddings are often padded), with a
        warning: the ids it lacks have no text and are never chosen."""
        n_tok = len(tokenizer)
        emb = model.get_input_embeddings()
        rows = min(self._width, int(emb.weight.shape[0]) if emb is not None else self._width)
        if n_tok > rows:
            raise ModelLoadError(
                f"model {self.name!r} has {rows} token embeddings/logits but its tokenizer has "
                f"{n_tok} token ids; ids {rows}..{n_tok - 1} would fail. Pass the tokenizer that "
                "belongs to the model (or resize the model's embeddings to the tokenizer)."
            )
        if n_tok < self._width:
            warnings.warn(
                f"model {self.name!r} has {self._width} logits but its tokenizer only {n_tok} "
                f"token ids; ids {n_tok}..{self._width - 1} have no text and are never chosen",
                UserWarning,
                stacklevel=4,
            )
        return n_tok

    @classmethod
    def load(cls, spec: ModelSpec) -> TransformersBackend:
        from ..sources import resolve_spec, unknown_source_hint

        spec = resolve_spec(spec)
        if spec.model is not None:
            return cls(spec.model, spec.tokenizer, spec)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = torch.device(spec.device)
        if spec.dtype == "auto":  # on a CPU: bfloat16 where it is native and faster
            dtype: Any = auto_cpu_dtype() if device.type == "cpu" else "auto"
        else:
            dtype = _DTYPES[spec.dtype]
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                spec.source, trust_remote_code=spec.trust_remote_code
            )
            with _no_progress_bars():  # a local load takes seconds: no "Loading weights" bar
                model = AutoModelForCausalLM.from_pretrained(
                    spec.source, dtype=dtype, trust_remote_code=spec.trust_remote_code
                ).to(device)  # type: ignore[arg-type]  # (transformers' typing of the wrapped .to)
        except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors, ...
            raise ModelLoadError(
                f"could not load model {spec.source!r}: {exc}. Pass a local directory with "
                "config.json, tokenizer files and weights, a hub id where a hub is reachable, "
                "a .gguf file, a preset name, or an already-loaded (model, tokenizer) pair."
                + unknown_source_hint(spec.source)
            ) from exc
        return cls(model, tokenizer, spec)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def logits_width(self) -> int:
        return self._width

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    @property
    def context_length(self) -> int | None:
        n = getattr(self._config, "max_position_embeddings", None)
        return int(n) if n else None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def new_state(self) -> SequenceState:
        return SequenceState(None)

    def forward(self, state: SequenceState, ids: list[int], n_last: int = 1) -> torch.Tensor:
        return self.forward_batch([state], [ids], [n_last])[0]

    def forward_batch(
        self, states: list[SequenceState], ids: list[list[int]], n_last: list[int]
    ) -> list[torch.Tensor]:
        """One forward pass per group of sequences that feed the same number of tokens (a decoding
        step: all of them), each group a ``KVBatch``. A group that is the batch of the previous
        pass, row for row, runs in it as it is; otherwise its rows are copied into a new one. A
        prompt starts from the longest cached prefix (``prefix_cache``); a prompt seen before as
        it is costs nothing."""
        for new, n in zip(ids, n_last):
            if not new or n > len(new):
                raise ValueError(f"forward needs at least max(1, n_last={n}) new tokens")
        out: list[torch.Tensor | None] = [None] * len(states)
        ids = list(ids)
        prompts = [i for i, s in enumerate(states) if not s.tokens]
        cache = self.prefix_cache
        if cache is not None:
            for i in prompts:
                n, row, logits = cache.lookup(ids[i], n_last[i])
                if n:
                    states[i].cache, states[i].tokens = row, list(ids[i][:n])
                    ids[i] = ids[i][n:]
                    if logits is not None:  # the whole prompt, seen before
                        out[i] = logits
        # rows that feed one token (a decoding step) share a pass; so do prompts (rows without a
        # past), left-padded, and, in a model without sliding-window layers, rows that feed
        # several tokens (a guide catching up, a rollback), padded between past and new tokens;
        # in a sliding-window model those share a pass only when they feed as many tokens
        groups: dict[Any, list[int]] = {}
        for i, new in enumerate(ids):
            if out[i] is not None:
                continue
            if not states[i].tokens:
                key: Any = "prompts"
            elif len(new) == 1 or self._sliding:
                key = len(new)
            else:
                key = "several"
            groups.setdefault(key, []).append(i)
        for key, rows in groups.items():  # (each row's logits are its own last positions)
            logits = self._run_group(
                [states[i] for i in rows],
                [ids[i] for i in rows],
                max(n_last[i] for i in rows),
                holes=key == "several",
            )
            for j, i in enumerate(rows):
                last = logits[j, -n_last[i] :]
                out[i] = last[-1] if n_last[i] == 1 else last
        if cache is not None:
            for i in prompts:
                if ids[i]:  # computed (in part)
                    past = own_row(states[i].cache)
                    assert past is not None  # the pass above filled it
                    cache.store(
                        states[i].tokens,
                        past,
                        out[i] if n_last[i] == 1 else None,
                        computed=len(ids[i]),
                    )
        return out  # type: ignore[return-value]

    def _run_group(
        self, states: list[SequenceState], ids: list[list[int]], n_last: int, holes: bool = False
    ) -> torch.Tensor:
        """Run rows that feed the same number of tokens (or prompts); logits
        ``[rows, n_last, width]``."""
        batch = self._reusable(states)
        if batch is None:
            batch = KVBatch(
                [own_row(s.cache) for s in states],
                [len(s.tokens) for s in states],
                self._n_layers,
                self.device,
                reserve=max(map(len, ids)) + 32,
            )
        logits = batch.forward(self.model, ids, n_last, holes=holes)
        for i, (s, new) in enumerate(zip(states, ids)):
            s.tokens.extend(new)
            s.cache = Slot(batch, i)
        return logits

    @staticmethod
    def _reusable(states: list[SequenceState]) -> KVBatch | None:
        """The batch these states are, row for row, if there is one."""
        first = states[0].cache
        if not isinstance(first, Slot):
            return None
        batch = first.batch
        if len(batch.lens) != len(states):
            return None
        for i, s in enumerate(states):
            c = s.cache
            if not isinstance(c, Slot) or c.batch is not batch or c.index != i:
                return None
        return batch

    def rollback(self, state: SequenceState, length: int) -> None:
        if length >= len(state.tokens):
            return
        row = own_row(state.cache)
        state.cache = row.crop(length) if row is not None and length else None
        del state.tokens[length:]
