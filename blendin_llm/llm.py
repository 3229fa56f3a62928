"""``BlendedLLM``: the user's one object. Framework-free; the LangChain and LlamaIndex faces wrap it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import queue
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any

from .backends.base import ModelBackend
from .backends.cpu import release_thread_pool
from .backends.transformers import TransformersBackend
from .config import BlendConfig, ModelSpec, SamplingParams
from .engine import Generation
from .errors import (
    BusyError,
    ConfigError,
    GenerationArgumentError,
    IncompatibleModelsError,
    PromptError,
)
from .filters import FilterChain, LeadingSpace, StopMatcher
from .mitigation import GuideMonitor
from .prompts import PromptLike, RawPrompt, normalize_messages, resolved_format, turn_stops
from .results import BlendResult, StreamEvent
from .scheduler import Request, Scheduler, TurnLock
from .strategies import get_strategy
from .tools import (
    JsonAnswer,
    ToolCallCapture,
    check_tool_history,
    normalize_response_format,
    normalize_tool_choice,
    normalize_tools,
    render_tool_turns,
)
from .vocab import VocabMap, vocab_map

ModelLike = str | ModelSpec | ModelBackend | tuple


def load_backend(model: ModelLike) -> ModelBackend:
    """A backend from a path/hub id, a ModelSpec, a (model, tokenizer) pair, or a backend."""
    if isinstance(model, ModelBackend):
        return model
    if isinstance(model, tuple):
        if len(model) != 2:
            raise ConfigError("a loaded model is passed as a (model, tokenizer) pair")
        m, tok = model
        return TransformersBackend(m, tok)
    if isinstance(model, str):
        model = ModelSpec(source=model)
    if isinstance(model, ModelSpec):
        return TransformersBackend.load(model)
    raise ConfigError(
        "a model must be a local path or hub id, a ModelSpec, a (model, tokenizer) pair or a "
        f"ModelBackend; got {type(model).__name__}"
    )


# ``stream``'s arguments that go to ``SamplingParams`` as they are
_PARAMS_AS_ASKED = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "ignore_eos",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "no_repeat_ngram_size",
)


@functools.lru_cache(maxsize=1)
def _stream_signature() -> inspect.Signature:
    """``BlendedLLM.stream``'s signature: every call's arguments are checked against it."""
    return inspect.signature(BlendedLLM.stream)


def _as_guide_list(guides: Any) -> list:
    """``guides`` may be None, one model, or a list of models. A 2-tuple whose first item is not
    itself a model reference is one (model, tokenizer) pair."""
    if guides is None:
        return []
    if isinstance(guides, list):
        return guides
    if isinstance(guides, tuple) and not (
        len(guides) == 2 and not isinstance(guides[0], (str, ModelSpec, ModelBackend, tuple))
    ):
        return list(guides)
    return [guides]


class BlendedLLM:
    """A base model steered by one or more guide models, with a reliability record per answer.

    >>> llm = BlendedLLM(base="path/to/base", guides=["path/to/guide"],
    ...                  config=BlendConfig(strategy="blendin", gamma=0.4, alpha="auto"))
    >>> res = llm.generate("Why is the sky blue?", max_new_tokens=64)
    >>> res.text, res.reliability.flagged

    ``cross_vocab``: "auto" blends guides with another tokenizer through a token map and keeps
    same-tokenizer guides on the fast path (shared token ids); "always" sends every guide through
    the cross-vocabulary path (for testing and comparison).

    One instance may be shared by many threads, asyncio tasks and open streams: their calls decode
    together in one running batch (continuous batching, ``blendin_llm.scheduler``). A call joins at
    the next step and leaves when it is done, so a short answer never waits for a long one; at most
    ``max_batch_size`` calls decode at once and the others wait in arrival order. Each call gives
    the output it would give alone (same tokens; floats equal up to rounding, about 1e-6 in
    float32). A stream that is partly read holds one row and its events wait for the reader.
    ``lock_timeout`` seconds (default 300) bound every wait: for a row, for the next token, for the
    models; past it the call raises ``BusyError``. Prompts that share a start (a system prompt,
    few-shot exemplars) reuse its computed keys and values (``prefix_cache_tokens`` per model, LRU;
    0 turns it off).

    ``audit``: an ``AuditLog`` or its URL (``"sqlite:///answers.db"``, ``"postgresql://..."``):
    every answer of ``stream``/``generate``/``astream``/``agenerate``/``generate_batch`` is
    appended to it (id = ``result.id``) and committed before the final event reaches the caller; a
    stream left before its end is recorded with ``finish_reason`` "abandoned" (see
    ``blendin_llm.audit``).

    Args:
        base: the base model: a preset name (``"gemma-3-270m"``), a directory, a ``.gguf`` file, a
            hub id, a ``ModelSpec``, a ``(model, tokenizer)`` pair or a backend (``RemoteModel``).
        guides: the guide model(s), each as ``base``; None or [] for none.
        config: how to blend and flag (default ``BlendConfig()``).
        name: the blend's name in results and logs (default ``base+guide+...``).
        cross_vocab: "auto" or "always" (above).
        lock_timeout: seconds any wait may take before ``BusyError``.
        max_batch_size: most calls decoding at once.
        prefix_cache_tokens: per model, tokens of shared prompt starts kept (0 = off).
        audit: an ``AuditLog``, its URL, or None.

    Raises:
        ConfigError: a bad setting; ModelLoadError: a model that cannot be loaded;
        IncompatibleModelsError: models that cannot be blended (e.g. on different devices).
    """

    def __init__(
        self,
        base: ModelLike,
        guides: Sequence[ModelLike] | ModelLike | None = None,
        config: BlendConfig | None = None,
        *,
        name: str | None = None,
        cross_vocab: str = "auto",
        lock_timeout: float = 300.0,
        max_batch_size: int = 16,
        prefix_cache_tokens: int = 4096,
        audit: Any = None,
    ) -> None:
        for label, n in (
            ("max_batch_size", max_batch_size),
            ("prefix_cache_tokens", prefix_cache_tokens),
        ):
            if not isinstance(n, int) or isinstance(n, bool) or n < (label == "max_batch_size"):
                raise ConfigError(
                    f"{label} must be an int >= {int(label == 'max_batch_size')}, got {n!r}"
                )
        self.config = config if config is not None else BlendConfig()
        if not isinstance(self.config, BlendConfig):
            raise ConfigError("config must be a BlendConfig")
        self.base = load_backend(base)
        self.guides = [load_backend(g) for g in _as_guide_list(guides)]
        if cross_vocab not in ("auto", "always"):
            raise ConfigError(f"cross_vocab must be 'auto' or 'always', got {cross_vocab!r}")
        self.vocab_maps = self._check_models(force_cross=cross_vocab == "always")
        self._check_config(self.config)
        self.turn_stops = turn_stops(self.base.spec, self.base.tokenizer)
        self.plain_base = resolved_format(self.base.spec, self.base.tokenizer) == "plain"
        self.name = name or "+".join([self.base.name, *(g.name for g in self.guides)])
        t = lock_timeout
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t < math.inf:
            raise ConfigError(f"lock_timeout must be a number of seconds > 0, got {t!r}")
        self.lock_timeout = float(t)
        # one decoding step at a time: the models, their tokenizers and the backends' caches are
        # shared by every call; each call's own state (KV caches, sampler) is its own
        self._lock = TurnLock()
        self.guide_monitor = GuideMonitor([g.name for g in self.guides])
        for m in (self.base, *self.guides):
            cache = getattr(m, "prefix_cache", None)
            if cache is not None:
                cache.max_tokens = prefix_cache_tokens
        self.scheduler = Scheduler(self._lock, max_batch_size, name=self.name)
        # the loading thread's idle CPU threads would slow the decoding thread's (a caller's go
        # when it hands a request to the scheduler)
        release_thread_pool()
        self.audit = self._open_audit(audit)

    @property
    def max_batch_size(self) -> int:
        """Most calls decoding at once (the others wait in arrival order).

        Returns:
            The limit set by ``max_batch_size=``.
        """
        return self.scheduler.max_batch_size

    def _open_audit(self, audit: Any) -> Any:
        """The AuditLog of ``audit=`` (None: no audit); the models' fingerprints are computed now,
        once, so that the first answer does not wait for them."""
        if audit is None:
            return None
        from .audit import AuditLog
        from .score_model import pair_fingerprints

        log = audit if isinstance(audit, AuditLog) else AuditLog.open(audit)
        pair_fingerprints(self.base, self.guides)
        return log

    @classmethod
    def from_profile(
        cls,
        path: Any,
        base: ModelLike | None = None,
        guides: Sequence[ModelLike] | ModelLike | None = None,
        force: bool = False,
        **kwargs: Any,
    ) -> BlendedLLM:
        """The pair and the recommended config of a profile written by ``blendin calibrate``.

        Args:
            path: the profile (JSON).
            base: replaces the base it names (e.g. an already-loaded model).
            guides: replace the guides it names.
            force: apply its score model even to other models (otherwise ConfigError).
            **kwargs: the constructor's other arguments.

        Returns:
            The engine with the profile's config (and score model).
        """
        from .config import load_profile

        prof = load_profile(path, force=force)
        models: Any = prof.get("models") or {}
        return cls(
            base if base is not None else models.get("base"),
            guides if guides is not None else models.get("guides"),
            prof["config"],
            **kwargs,
        )

    # -- checks ----------------------------------------------------------------------------
    def _check_models(self, force_cross: bool) -> list[VocabMap | None]:
        """Same device for all; a VocabMap for each guide whose vocabulary differs (or all)."""
        maps: list[VocabMap | None] = []
        base_vocab = self.base.vocab() if self.guides else None
        for g in self.guides:
            if g.device != self.base.device:
                raise IncompatibleModelsError(
                    f"guide {g.name!r} is on {g.device} but the base is on {self.base.device}; "
                    "put every model on the same device (ModelSpec(device=...) or model.to(...))"
                )
            shared = g.vocab() == base_vocab
            maps.append(None if shared and not force_cross else vocab_map(g, self.base))
        return maps

    def _check_config(self, config: BlendConfig) -> None:
        if get_strategy(config).requires_guide and not self.guides:
            raise ConfigError(
                f"strategy {config.strategy!r} needs at least one guide model; pass guides=[...] "
                "or use strategy='base_only'"
            )
        if config.reliability.score_model is not None:  # a profile's: fitted for these models?
            from .score_model import check_pair

            check_pair(config.reliability.score_model, self.base, self.guides)

    def check_options(self, **overrides: Any) -> BlendConfig:
        """The config a call with these ``BlendConfig`` overrides would run with (``strategy=``,
        ``gamma=``, ``alpha=``, ...), checked against this engine's models without decoding, so a
        framework face or the server can reject a bad setting before decoding starts.

        Args:
            **overrides: fields of the instance's ``BlendConfig`` to replace.

        Returns:
            The resulting ``BlendConfig``.

        Raises:
            ConfigError: an unknown option, a bad value, or one these models cannot run (e.g. a
                strategy that needs a guide, on an engine without one).
        """
        return self._resolve_config(overrides)

    def _resolve_config(self, overrides: dict[str, Any]) -> BlendConfig:
        if not overrides:
            return self.config
        unknown = set(overrides) - set(BlendConfig.model_fields)
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)}")
        config = self.config.replace(**overrides)
        self._check_config(config)
        return config

    # -- generation --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold the models for one step (a prompt's encoding, or one decoding step)."""
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise BusyError(
                f"waited {self.lock_timeout:g} s for a turn at the models of {self.name!r}: "
                "another call's decoding step took that long, or very many calls are decoding "
                "at once; retry, send fewer calls at a time, or raise BlendedLLM(lock_timeout=...)"
            )
        try:
            yield
        finally:
            self._lock.release()

    def _prepare(
        self,
        prompt: PromptLike,
        params: SamplingParams,
        config: BlendConfig,
        trace: bool,
        tools: Any = None,
        tool_choice: Any = None,
        response_format: Any = None,
        parallel_tool_calls: bool = False,
    ) -> tuple[Generation, list[bool]]:
        """The generation, and which of the instance's guides take part (mitigation)."""
        raw = isinstance(prompt, RawPrompt)
        if raw:
            if tools or response_format is not None:
                raise PromptError(
                    "a raw prompt (a completion) takes no tools or "
                    "response_format: send chat messages for those"
                )
            tools, choice, fmt, prefix = [], None, None, ""
        else:
            messages = normalize_messages(prompt)
            check_tool_history(messages)
            tools = normalize_tools(tools)
            choice = normalize_tool_choice(tool_choice, tools)
            fmt = normalize_response_format(response_format)
            messages, prefix = render_tool_turns(messages, tools, choice, fmt)
        # run-time mitigation: switched-off guides (weight 0) do not take part at all
        weights, notes = self.guide_monitor.plan(config.mitigation)
        active = [w > 0 for w in weights]
        guides = [g for g, a in zip(self.guides, active) if a]
        vocab_maps = [m for m, a in zip(self.vocab_maps, active) if a]
        models = [self.base, *guides]
        with self._turn():  # the tokenizers are shared with the steps of other calls
            if isinstance(prompt, RawPrompt):
                prompt_ids = self._raw_ids(prompt, guides, vocab_maps)
            else:
                prompt_ids = [m.encode_prompt(messages, prefix) for m in models]
        budget = params.max_new_tokens
        for m, ids in zip(models, prompt_ids):
            if not ids:
                raise PromptError(f"the prompt renders to zero tokens for {m.name!r}")
            ctx = m.context_length
            if ctx is not None:
                if len(ids) >= ctx:
                    raise PromptError(
                        f"the prompt is {len(ids)} tokens for {m.name!r}, whose context holds "
                        f"{ctx}; shorten the prompt to leave room for the answer"
                    )
                budget = min(budget, ctx - len(ids))
        # the answer's text filters: stop strings always, the others only when they are needed
        filters: list[Any] = [StopMatcher(params.stop)]
        if self.plain_base and not raw:
            filters.insert(0, LeadingSpace())
        capture = ToolCallCapture(parallel_tool_calls) if tools and choice != "none" else None
        if capture is not None:
            filters.append(capture)
        elif fmt is not None:
            filters.append(JsonAnswer())
        gen = Generation(
            base=self.base,
            guides=guides,
            vocab_maps=vocab_maps,
            strategy=get_strategy(config),
            config=config,
            params=params,
            prompt_ids=prompt_ids,
            budget=budget,
            model_name=self.name,
            trace=trace,
            stops=filters[0] if len(filters) == 1 else FilterChain(filters),
            prefix=prefix,
            tool_capture=capture,
            tools=tools,
            guide_weights=[w for w in weights if w > 0],
            mitigations=notes,
        )
        return gen, active

    def _raw_ids(
        self, prompt: RawPrompt, guides: list[ModelBackend], vocab_maps: list[VocabMap | None]
    ) -> list[list[int]]:
        """Each model's tokens of a raw prompt: the base's ids as given (or its encoding of the
        text); a guide of the same vocabulary shares them, another encodes the text."""
        base = self.base
        if prompt.ids is not None:
            bad = [i for i in prompt.ids if i >= base.n_tokens]
            if bad:
                raise PromptError(
                    f"token id {bad[0]} is not in the vocabulary of {base.name!r} "
                    f"({base.n_tokens} tokens)"
                )
            ids = list(prompt.ids)
            text = base.tokenizer.decode(ids, skip_special_tokens=True)
        else:
            text = prompt.text
            assert text is not None  # a RawPrompt has text or ids
            ids = base.encode_text(text)
        out = [ids]
        for g, vm in zip(guides, vocab_maps):
            out.append(list(ids) if vm is None and prompt.ids is not None else g.encode_text(text))
        return out

    def stream(
        self,
        prompt: PromptLike,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        trace: bool = False,
        ignore_eos: bool = False,
        tools: Sequence[dict] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool = False,
        response_format: dict | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        no_repeat_ngram_size: int = 0,
        **config_overrides: Any,
    ) -> Iterator[StreamEvent]:
        """Yield one event per token (``event.text`` is the released text); the last event has
        ``done=True`` and carries the ``BlendResult``. Arguments are checked before this returns.

        A base in the plain prompt format also stops where it would start the next user turn
        (``"\nUser:"`` with the default prefixes), its end of turn (``ignore_eos`` ignores it
        too), and its answer loses the space after ``Assistant:``.

        ``tools`` (OpenAI-shaped function tools) are described to the models; calls the answer
        makes come back in ``result.tool_calls`` (``finish_reason == "tool_calls"``) and their
        markup is kept out of the text. ``tool_choice``: "auto" (default), "none", "required", or
        a tool's name; a required call is started for the model (prefill). Without
        ``parallel_tool_calls`` the answer ends after its first call.
        ``response_format={"type": "json_object"}`` (or ``"json_schema"`` with a schema) makes the
        answer one JSON object: it starts with "{" and ends where the object closes.
        ``logprobs=True`` reports each streamed token's log-prob in the final (blended)
        distribution, with ``top_logprobs`` alternatives (``event.logprob``, ``result.logprobs``).

        ``repetition_penalty`` (transformers' semantics, 1.0 = off), ``frequency_penalty`` and
        ``presence_penalty`` (OpenAI's, in [-2, 2], 0 = off) and ``no_repeat_ngram_size``
        (transformers', 0 = off) change the final distribution before the token is chosen,
        counting the answer's tokens only (``SamplingParams``).

        ``config_overrides`` (``strategy=``, ``gamma=``, ``alpha=``, ...) replace fields of the
        instance's BlendConfig for this call only.

        Args:
            prompt: a string (templated as one user turn), a list of ``{role, content}`` messages,
                or a ``RawPrompt`` (text or token ids continued as is).
            max_new_tokens, temperature, top_p, top_k, seed, stop, ignore_eos: sampling
                (``SamplingParams`` says what each takes).
            trace: record every step (``result.reliability.trace``).
            tools, tool_choice, parallel_tool_calls, response_format: tool calls and JSON answers.
            logprobs, top_logprobs: log-probs of the chosen tokens and their alternatives.
            repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram_size:
                penalties (above).
            **config_overrides: BlendConfig fields for this call.

        Returns:
            An iterator of ``StreamEvent``; the last one has ``done=True`` and ``result``.

        Raises:
            GenerationArgumentError, ConfigError, PromptError: bad arguments, before any decoding;
            BusyError: no row within ``lock_timeout``.
        """
        call = {
            k: v for k, v in locals().items() if k not in ("self", "prompt", "config_overrides")
        }
        return self._events(*self._start(prompt, **call, **config_overrides))

    def _start(self, prompt: PromptLike, **kwargs: Any) -> tuple[Generation, list[bool], Any]:
        """Check a call's arguments; its ``Generation``, the guides taking part, and its audit
        (a ``StreamAudit``, or None without an audit log). ``kwargs`` are ``stream``'s."""
        bound = _stream_signature().bind(self, prompt, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        overrides = a["config_overrides"]
        for flag in ("trace", "logprobs", "parallel_tool_calls"):
            if not isinstance(a[flag], bool):
                raise GenerationArgumentError(f"{flag} must be True or False, got {a[flag]!r}")
        params = SamplingParams(
            stop=() if a["stop"] is None else a["stop"],
            logprobs=a["top_logprobs"] if a["logprobs"] or a["top_logprobs"] else None,
            **{k: a[k] for k in _PARAMS_AS_ASKED},
        )
        asked = (
            None
            if self.audit is None
            else dict(  # AUDIT: the call's parameters, as asked
                params=params.to_dict(),
                tools=a["tools"],
                tool_choice=a["tool_choice"],
                parallel_tool_calls=a["parallel_tool_calls"],
                response_format=a["response_format"],
                trace=a["trace"],
                overrides=overrides,
            )
        )
        if self.turn_stops and not isinstance(prompt, RawPrompt) and not params.ignore_eos:
            # the next user turn is a plain-format base's end of its answer: its EOS
            params = params.replace(stop=params.stop + self.turn_stops)
        config = self._resolve_config(overrides)
        gen, active = self._prepare(
            prompt,
            params,
            config,
            a["trace"],
            a["tools"],
            a["tool_choice"],
            a["response_format"],
            a["parallel_tool_calls"],
        )
        return gen, active, self._audit_call(prompt, asked, config)

    def _audit_call(self, prompt: PromptLike, asked: dict | None, config: BlendConfig) -> Any:
        """The ``StreamAudit`` of one call (None without an audit log)."""
        if self.audit is None:
            return None
        from .audit import StreamAudit

        request: dict[str, Any]
        if isinstance(prompt, RawPrompt):
            request = {"prompt": prompt.as_record(), "raw": True}
        else:
            request = (
                {"prompt": prompt}
                if isinstance(prompt, str)
                else {"messages": normalize_messages(prompt)}
            )
        return StreamAudit(self.audit, self, config, {**request, "params": asked})

    def _submit(self, gen: Generation, active: list[bool], sink: Any, audit: Any = None) -> Request:
        """Hand ``gen`` to the scheduler; its events go to ``sink``. With an audit log the
        answer's record is committed before its final event reaches ``sink``."""

        def finished(event: StreamEvent) -> None:  # on the decoding thread, before the caller
            assert event.result is not None  # the last event
            self.guide_monitor.observe(event.result.reliability, gen.config.mitigation, active)
            if audit is not None:  # AUDIT: durable before the caller sees the end
                audit.finish(event.result)

        return self.scheduler.submit(gen, sink, finished)

    def _busy(self, what: str) -> BusyError:
        return BusyError(
            f"waited {self.lock_timeout:g} s for {what} at the models of {self.name!r}: "
            f"{self.scheduler.running} calls are decoding and {self.scheduler.queued} waiting "
            f"(max_batch_size={self.max_batch_size}); retry, send fewer calls at a time, or raise "
            "BlendedLLM(lock_timeout=...)"
        )

    def _received(self, req: Request, audit: Any, got: tuple | None) -> StreamEvent:
        """What the scheduler sent a stream (``(event, error)``, or None after ``lock_timeout``):
        the event (counted for the audit), or the call's error raised."""
        if got is None:
            raise self._busy("a row" if req.admitted is None else "the next token")
        event, error = got
        if error is not None:
            raise error
        if audit is not None and not event.done:
            audit.saw(event)
        return event

    @staticmethod
    @contextlib.contextmanager
    def _ending(req: Request, audit: Any) -> Iterator[None]:
        """How a stream's reading ends, however it ends: its row is freed; with an audit log, a
        stream left or failed before its end is recorded as such."""
        try:
            yield
        except BaseException as exc:
            if audit is not None:  # AUDIT: a stream left or failed before its end
                audit.abandon(exc)
            raise
        finally:
            req.cancel()

    def _events(
        self, gen: Generation, active: list[bool], audit: Any = None
    ) -> Iterator[StreamEvent]:
        """``gen``'s events as the scheduler makes them. Closing the stream (or dropping it)
        frees its row at the next step; with an audit log, a stream left before its end is
        recorded as such."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        req = self._submit(gen, active, lambda event, error: inbox.put((event, error)), audit)
        with self._ending(req, audit):
            while True:
                try:
                    got = inbox.get(timeout=self.lock_timeout)
                except queue.Empty:
                    got = None
                event = self._received(req, audit, got)
                yield event
                if event.done:
                    return

    async def astream(self, prompt: PromptLike, **kwargs: Any) -> AsyncGenerator[StreamEvent, None]:
        """``stream`` for asyncio: the call joins the same running batch; the event loop keeps
        running while it decodes. Leaving the loop early (or cancelling) frees its row at the next
        step.

        Args:
            prompt: as for ``stream``.
            **kwargs: as for ``stream``.

        Returns:
            An async iterator of ``StreamEvent`` (the last one carries the result).
        """
        gen, active, audit = await asyncio.to_thread(self._start, prompt, **kwargs)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        req: Request | None = None

        def sink(event: StreamEvent | None, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, (event, error))
            except RuntimeError:  # the loop is gone: nobody is listening any more
                if req is not None:
                    req.cancel()

        req = self._submit(gen, active, sink, audit)
        with self._ending(req, audit):
            while True:
                try:
                    got = await asyncio.wait_for(inbox.get(), self.lock_timeout)
                except asyncio.TimeoutError:
                    got = None
                event = self._received(req, audit, got)
                yield event
                if event.done:
                    return

    async def agenerate(self, prompt: PromptLike, **kwargs: Any) -> BlendResult:
        """``generate`` for asyncio (see ``astream``).

        Args:
            prompt: as for ``stream``.
            **kwargs: as for ``stream``.

        Returns:
            The ``BlendResult``.
        """
        result = None
        async for event in self.astream(prompt, **kwargs):
            result = event.result
        assert result is not None
        return result

    def generate_batch(self, prompts: Sequence[PromptLike], **kwargs: Any) -> list[BlendResult]:
        """Generate answers to many prompts at once, decoded together in the running batch;
        results in the order of ``prompts``. Same keyword arguments as ``stream`` (one set for
        all). Every prompt is checked before any decoding starts.

        Args:
            prompts: prompts (strings or message lists).
            **kwargs: as for ``stream``.

        Returns:
            One ``BlendResult`` per prompt, in order.
        """
        if isinstance(prompts, (str, dict)) or not isinstance(prompts, Sequence):
            raise PromptError("generate_batch takes a list of prompts (use generate for one)")
        started = [self._start(p, **kwargs) for p in prompts]
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        reqs = [
            self._submit(
                gen,
                active,
                lambda event, error, i=i: (
                    None if event is not None and not event.done else inbox.put((i, event, error))
                ),
                audit,
            )
            for i, (gen, active, audit) in enumerate(started)
        ]
        results: list[BlendResult | None] = [None] * len(reqs)
        try:
            for _ in reqs:
                try:
                    i, event, error = inbox.get(timeout=self.lock_timeout)
                except queue.Empty:
                    raise self._busy("an answer") from None
                if error is not None:
                    raise error
                results[i] = event.result
        except BaseException as exc:
            for _, _, audit in started:
                if audit is not None:  # AUDIT: the answers that did not finish
                    audit.abandon(exc)
            raise
        finally:
            for r in reqs:
                r.cancel()
        return results  # type: ignore[return-value]

    def generate(self, prompt: PromptLike, **kwargs: Any) -> BlendResult:
        """Generate a whole answer.

        Args:
            prompt: as for ``stream``.
            **kwargs: as for ``stream``.

        Returns:
            The ``BlendResult``: text, tokens, usage, tool calls, log-probs and the reliability
            record.
        """
        result = None
        for event in self.stream(prompt, **kwargs):
            result = event.result
        assert result is not None
        return result

    __call__ = generate

    @property
    def context_window(self) -> int | None:
        """The smallest context length (prompt + answer, in tokens) among the base and the guides,
        or None when no model states one. Every model reads the whole prompt, so this is the
        longest the blend can serve; the framework faces report it (LlamaIndex packs prompts to
        it). Each model counts in its own tokens, so leave a little room across vocabularies.

        Returns:
            The length in tokens, or None.
        """
        known = [m.context_length for m in (self.base, *self.guides) if m.context_length]
        return min(known) if known else None

    # -- framework faces (same loaded models, no copies) --------------------------------------
    def as_langchain(self, **kwargs: Any) -> Any:
        """This engine as a LangChain chat model (``langchain_blendin.ChatBlendIn``).

        Args:
            **kwargs: ``ChatBlendIn`` settings (``temperature=``, ``gamma=``, ...).

        Returns:
            A ``ChatBlendIn`` sharing these loaded models.
        """
        try:
            from langchain_blendin import ChatBlendIn
        except ImportError as e:
            raise ImportError(
                "the LangChain face is the package langchain-blendin: pip install "
                "./integrations/langchain-blendin"
            ) from e
        return ChatBlendIn(llm=self, **kwargs)

    def as_llama_index(self, **kwargs: Any) -> Any:
        """This engine as a LlamaIndex LLM (``llama_index.llms.blendin.BlendIn``).

        Args:
            **kwargs: ``BlendIn`` settings (``temperature=``, ``gamma=``, ...).

        Returns:
            A LlamaIndex ``BlendIn`` sharing these loaded models.
        """
        try:
            from llama_index.llms.blendin import BlendIn
        except ImportError as e:
            raise ImportError(
                "the LlamaIndex face is the package llama-index-llms-blendin: pip "
                "install ./integrations/llama-index-llms-blendin"
            ) from e
        return BlendIn(llm=self, **kwargs)

    def __repr__(self) -> str:
        return (
            f"BlendedLLM(base={self.base.name!r}, guides={[g.name for g in self.guides]!r}, "
            f"strategy={self.config.strategy!r})"
        )
