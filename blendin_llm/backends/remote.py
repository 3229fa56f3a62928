"""A model served elsewhere, as a ``ModelBackend``: any OpenAI-compatible ``/v1/completions``
endpoint that returns top-k log-probs (vLLM, SGLang, llama.cpp's server, ``blendin serve``).

Bases of 8B-70B parameters run on their own GPUs, usually behind vLLM. Neither vLLM nor SGLang can
mix two models' distributions inside the engine, so the blend happens here, and the cost that
matters is the number of round trips. Asking for one token per request (the reference BlendIn code:
``max_tokens=1, logprobs=100``) pays a round trip, and the prompt's prefill, for every token.

**Gated chunked speculation.** A request asks for a chunk of up to ``chunk`` tokens (default 16)
with the top-k log-probs of every position: the server samples the chunk as the base alone would
(greedy, or with the call's temperature and seed) and returns, for each position, the distribution
it sampled from. The engine then reads the chunk position by position without another request:
while the token it commits is the chunk's own, the next position's distribution is already known.
At a position whose top-1 probability is below gamma it consults the guides and blends; if the
blend keeps the base's token, the chunk goes on; if it takes another token, the rest of the chunk
is dropped and the next request starts from the new token. Round trips thus scale with the steps
where a guide changed the answer (plus one per ``chunk`` tokens), not with the tokens. Sampling stays
faithful: at steps where no guide was consulted the token is the server's own draw
(``ModelBackend.proposal``), from its whole distribution; a consulted step is drawn from the blend.

**The top-k approximation.** A position's distribution is known on its top-k ids only. ``forward``
returns the exact log-probs there and spreads the rest of the mass (``1 - sum(top-k)``) evenly over
the other ids, so the base's top-1 probability (the gate), its top-k features and the chosen
token's log-prob are exact; the engine then chooses among the union of the top-k lists of the
distributions that took part, renormalised (``Generation._support``). Compared with the whole
distribution, a greedy choice can only differ when the blend's best token is in none of the top-k
lists, or when the spread tail changes the blend's order (it carries at most ``1 - sum(top-k)`` of
each remote model's mass): a larger k bounds both. Entropy-like signals are computed from the top-k
and the record says ``top_k_approximation: k``.

Prompts go as token ids where the server takes them (vLLM: a list of ids as ``prompt`` and
``return_tokens_as_token_ids``), so the server reads exactly the tokens chosen here; its prefix
cache makes the re-sent prefix cheap (vLLM: ``--enable-prefix-caching``). With ``token_ids=False``
the prompt goes as text and returned tokens are matched to ids by their text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ModelSpec
from ..errors import ModelLoadError, RemoteModelError, RemoteTimeoutError
from .base import ModelBackend, SequenceState

_MAX_CHUNKS = 4  # chunks kept per sequence (a cross-vocabulary guide reads two positions back)


class _Chunk:
    """One request's answer, as it arrives: the tokens the server sampled after ``prefix`` and,
    for each position, the top-k (ids, log-probs) it sampled from. ``limit``: the most tokens
    asked; ``done``: nothing more will arrive (``error``: why, when it failed)."""

    __slots__ = ("prefix", "tokens", "tops", "limit", "done", "error", "future", "closed")

    def __init__(self, prefix: list[int], limit: int) -> None:
        self.prefix = prefix
        self.tokens: list[int] = []
        self.tops: list[tuple[list[int], list[float]]] = []
        self.limit = limit
        self.done = False
        self.error: BaseException | None = None
        self.future: concurrent.futures.Future | None = None
        self.closed = False  # nobody reads it any more: its reader stops at the next piece

    def follows(self, tokens: list[int]) -> bool:
        """``tokens`` are this chunk's prefix and then its own tokens, as far as they go."""
        s = len(self.prefix)
        n = min(len(tokens) - s, len(self.tokens))
        return n >= 0 and tokens[s : s + n] == self.tokens[:n] and tokens[:s] == self.prefix

    def pending(self, tokens: list[int], p: int) -> bool:
        """The distribution after ``tokens[:p]`` is still to arrive in this chunk."""
        s, n = len(self.prefix), len(self.tops)
        return (
            not self.done
            and len(self.tokens) == n
            and s + n <= p < s + self.limit
            and p <= len(tokens)
            and self.follows(tokens[:p])
        )


class _RemoteState:
    """A sequence's remote side: its chunks (the newest first, maybe still arriving) and how it
    samples."""

    __slots__ = ("chunks", "sampling", "cancelled")

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.sampling: tuple[float, float, int, int | None] = (0.0, 1.0, 0, None)
        self.cancelled = False

    def lookup(
        self, tokens: list[int], p: int
    ) -> tuple[tuple[list[int], list[float]], int | None] | None:
        """The distribution after ``tokens[:p]`` and the server's token there (None if unknown),
        if a chunk has them: the chunk's prefix is ``tokens``'s and the tokens since are the
        chunk's own."""
        for ch in self.chunks:
            s = len(ch.prefix)
            if (
                s <= p < s + len(ch.tops)
                and tokens[s:p] == ch.tokens[: p - s]
                and tokens[:s] == ch.prefix
            ):
                return ch.tops[p - s], ch.tokens[p - s] if p - s < len(ch.tokens) else None
        return None

    def stop(self, now: bool = False) -> None:
        """Close the request still arriving, if any: at its next piece (the connection goes back
        to the pool), or ``now`` (the task is cancelled, even while it waits for the server)."""
        for ch in self.chunks:
            if not ch.done:
                ch.closed = True
                if now and ch.future is not None:
                    ch.future.cancel()


class _Loop:
    """An asyncio loop on a daemon thread: the backend's HTTP requests run there, so that a
    request in flight can be cancelled from any thread (``Future.cancel``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="blendin-remote", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class RemoteModel(ModelBackend):
    """A base or guide model served by an OpenAI-compatible completions endpoint with top-k
    log-probs. Use it wherever a model goes: ``BlendedLLM(base=RemoteModel(...), guides=[...])``,
    local and remote models mixed freely.

    Args:
        base_url: the server's OpenAI base URL, e.g. ``"http://gpu-box:8000/v1"``.
        model: the served model's name (vLLM: ``--served-model-name``, or the path it loaded).
        api_key: sent as ``Authorization: Bearer <key>``.
        tokenizer: the served model's tokenizer: a local directory or hub id, or a loaded
            tokenizer (default: ``model`` itself, as vLLM does). Prompts are rendered and answers
            detokenized here, so it must be the server's own.
        top_k: top log-probs asked per position (vLLM allows up to ``--max-logprobs``, 20 by
            default); it bounds the approximation (see the module's docstring).
        chunk: most tokens per request (default 32). With ``chunk=1, stream=False``: the
            reference pattern, one request per token.
        stream: read each request's tokens as the server makes them (server-sent events): the
            engine goes on with the first token while the server makes the next, and a request
            whose chunk the blend left is closed at once, so the server stops making tokens
            nobody reads. False waits for whole chunks.
        timeout: seconds per request (connect and each read).
        retries: further tries after a 429, a 5xx, a timeout or a dropped connection, with
            exponential backoff from ``backoff`` seconds (a ``Retry-After`` header wins).
        token_ids: send prompts as token ids and read tokens back as ids (vLLM, SGLang,
            ``blendin serve``); False sends text and matches returned tokens by their text.
        context_length: the model's context (default: the server's ``max_model_len`` from
            ``/v1/models``, when it reports one).
        eos_token_ids: ids that end an answer (default: the tokenizer's EOS, and the
            ``generation_config.json`` beside a local tokenizer).
        name: the name in reliability records (default: ``model``).
        spec: how the model wants its prompt (``ModelSpec`` fields ``prompt_format``,
            ``system_prompt``, prefixes); its ``source`` is only a name here.
        max_connections: most requests in flight at once (rows of a batch ask concurrently).
        check: ask ``/v1/models`` at construction whether the server serves ``model``.
        headers: more HTTP headers for every request.

    Raises:
        RemoteModelError: with ``check``, the server is unreachable or does not serve ``model``.
        ModelLoadError: the tokenizer cannot be loaded.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        tokenizer: Any = None,
        top_k: int = 20,
        chunk: int = 32,
        stream: bool = True,
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.25,
        token_ids: bool = True,
        context_length: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        name: str | None = None,
        spec: ModelSpec | None = None,
        max_connections: int = 32,
        check: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        import httpx

        from ..errors import ConfigError

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url must be an http(s) URL such as "
                f"'http://localhost:8000/v1', got {base_url!r}"
            )
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be the served model's name")
        for what, v, lo in (
            ("top_k", top_k, 1),
            ("chunk", chunk, 1),
            ("retries", retries, 0),
            ("max_connections", max_connections, 1),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"RemoteModel {what} must be an integer >= {lo}, got {v!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(
                f"RemoteModel timeout must be a number of seconds > 0, got {timeout!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.top_k = top_k
        self.chunk = chunk
        self.stream = stream
        self._cond = threading.Condition()
        self._arrived = 0  # tokens arrived, all sequences (forward_batch waits on it)
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = backoff
        self.token_ids = token_ids
        self.requests = 0  # round trips made, all sequences (the benchmark reads it)
        self.retried = 0
        self.spec = spec or ModelSpec(source=model)
        if spec is None or spec.name is None:
            self.spec = self.spec.replace(name=name or model)
        self.tokenizer, self._eos = self._load_tokenizer(
            tokenizer if tokenizer is not None else model, eos_token_ids
        )
        self._width = max(len(self.tokenizer), max(self.tokenizer.get_vocab().values()) + 1)
        self._context = context_length
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        self._headers = hdrs
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._loop = _Loop()
        self._client = self._loop.submit(self._make_client()).result()
        self._text_ids: dict[str, int] | None = None
        if check:
            self._check()

    # -- setup -----------------------------------------------------------------------------
    async def _make_client(self) -> Any:
        import httpx

        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout),
            limits=self._limits,
        )

    def _load_tokenizer(self, source: Any, eos: Sequence[int] | None) -> tuple[Any, frozenset]:
        if isinstance(source, str):
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(source)
            except Exception as e:
                raise ModelLoadError(
                    f"cannot load the tokenizer of remote model {self.model!r} from {source!r} "
                    f"({type(e).__name__}: {str(e)[:200]}); pass tokenizer=<a local directory "
                    "with the served model's tokenizer files>"
                ) from None
        else:
            tok = source
        ids = set(eos or ())
        if not eos:
            if tok.eos_token_id is not None:
                ids.add(int(tok.eos_token_id))
            gen = Path(source) / "generation_config.json" if isinstance(source, str) else None
            if gen is not None and gen.is_file():
                got = json.loads(gen.read_text()).get("eos_token_id")
                ids.update([got] if isinstance(got, int) else (got or []))
        return tok, frozenset(int(i) for i in ids)

    def _check(self) -> None:
        """The server serves ``model``; its context length, when it reports one."""

        async def get() -> Any:
            return await self._client.get("/models", timeout=min(self.timeout, 10.0))

        try:
            r = self._loop.submit(get()).result()
        except Exception as e:
            raise RemoteModelError(
                f"cannot reach {self.base_url} ({type(e).__name__}: {e}); is the server "
                "running? (RemoteModel(check=False) skips this check)"
            ) from None
        if r.status_code != 200:
            raise RemoteModelError(
                f"{self.base_url}/models answered {r.status_code}: {_server_message(r)}",
                r.status_code,
            )
        data = r.json().get("data") or []
        served: dict[Any, dict] = {m.get("id"): m for m in data if isinstance(m, dict)}
        if self.model not in served:
            raise RemoteModelError(
                f"{self.base_url} does not serve {self.model!r}; it serves {sorted(served)}"
            )
        if self._context is None:
            n = served[self.model].get("max_model_len")
            self._context = int(n) if isinstance(n, int) and n > 0 else None

    def close(self) -> None:
        """Close the HTTP connections and the request thread."""
        try:
            self._loop.submit(self._client.aclose()).result(timeout=5)
        except Exception:
            pass
        self._loop.close()

    # -- facts -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def logits_width(self) -> int:
        return self._width

    @property
    def context_length(self) -> int | None:
        return self._context

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def top_k_approximation(self) -> int | None:
        return self.top_k

    # -- per sequence -------------------------------------------------------------------------
    def new_state(self) -> SequenceState:
        return SequenceState(_RemoteState())

    def set_sampling(
        self, state: SequenceState, temperature: float, top_p: float, top_k: int, seed: int | None
    ) -> None:
        state.cache.sampling = (temperature, top_p, top_k, seed)

    def proposal(self, state: SequenceState) -> int | None:
        st = state.cache
        hit = st.lookup(state.tokens, len(state.tokens)) if st is not None else None
        return None if hit is None else hit[1]

    def cancel(self, state: SequenceState) -> None:
        st = state.cache
        if st is not None:
            st.cancelled = True
            st.stop(now=True)

    def release(self, state: SequenceState) -> None:
        st = state.cache
        if st is not None:
            st.stop()

    def rollback(self, state: SequenceState, length: int) -> None:
        del state.tokens[length:]

    def forward(self, state: SequenceState, ids: list[int], n_last: int = 1) -> torch.Tensor:
        out = self.forward_batch([state], [ids], [n_last])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def forward_batch(
        self, states: list[SequenceState], ids: list[list[int]], n_last: list[int]
    ) -> list[Any]:
        """The distributions after the last ``n_last`` positions of each sequence: from the
        chunks it has (no request), waiting for a chunk that is still arriving when it follows
        the sequence, or from a new request (the old one closed), made concurrently for all
        sequences that need one. A sequence whose request fails gets its exception in its
        place."""
        out: list[Any] = [None] * len(states)
        rows: list[list[tuple[list[int], list[float]]]] = [[] for _ in states]
        todo: dict[int, list[int]] = {}
        for j, (s, i, n) in enumerate(zip(states, ids, n_last)):
            s.tokens.extend(i)
            todo[j] = list(range(len(s.tokens) - n + 1, len(s.tokens) + 1))
        while todo:
            seen = self._arrived
            waiting = False
            for j in list(todo):
                s, st, positions = states[j], states[j].cache, todo[j]
                while positions and (hit := st.lookup(s.tokens, positions[0])) is not None:
                    rows[j].append(hit[0])
                    positions.pop(0)
                if not positions:
                    del todo[j]
                    continue
                p = positions[0]
                head = st.chunks[0] if st.chunks else None
                if head is not None and head.pending(s.tokens, p):
                    waiting = True  # it is on its way
                    continue
                if (
                    head is not None
                    and head.done
                    and head.error is not None
                    and len(head.prefix) + len(head.tops) == p
                    and head.follows(s.tokens[:p])
                ):
                    out[j] = head.error  # the request for this very position failed
                    del todo[j]
                    continue
                if st.cancelled:
                    out[j] = RemoteModelError("the sequence was abandoned")
                    del todo[j]
                    continue
                try:
                    self._open(st, s.tokens[:p])
                except RemoteModelError as e:
                    out[j] = e
                    del todo[j]
                    continue
                waiting = True
            if todo and waiting:
                with self._cond:
                    self._cond.wait_for(lambda: self._arrived != seen, timeout=1.0)  # noqa: B023
        for j, r in enumerate(rows):
            if out[j] is None:
                logits = torch.stack([self._logits(*top) for top in r])
                out[j] = logits[0] if n_last[j] == 1 else logits
        return out

    def _logits(self, ids: list[int], lps: list[float]) -> torch.Tensor:
        """Full-width logits with the top-k log-probs exact and the rest of the mass spread
        evenly over the other ids (see the module's docstring)."""
        lp = torch.tensor(lps, dtype=torch.float32)
        rest = self._width - len(ids)
        mass = float(lp.exp().sum().clamp(max=1.0))
        tail = math.log(max(1.0 - mass, 1e-6) / rest) if rest > 0 else -math.inf
        x = torch.full((self._width,), tail, dtype=torch.float32)
        x[torch.tensor(ids, dtype=torch.long)] = lp
        return x

    # -- the request ---------------------------------------------------------------------------
    def _open(self, st: _RemoteState, prefix: list[int]) -> _Chunk:
        """Start the request for the tokens after ``prefix`` (closing the sequence's request
        still arriving: it went another way)."""
        body = self._body(st, prefix)
        st.stop()
        ch = _Chunk(list(prefix), body["max_tokens"])
        st.chunks.insert(0, ch)
        del st.chunks[_MAX_CHUNKS:]
        ch.future = self._loop.submit(self._fill(st, ch, body))
        return ch

    def _body(self, st: _RemoteState, prefix: list[int]) -> dict:
        n = self.chunk
        if self._context is not None:
            n = min(n, self._context - len(prefix))
            if n < 1:
                raise RemoteModelError(
                    f"the sequence fills {self.model!r}'s context of {self._context} tokens"
                )
        temperature, top_p, top_k, seed = st.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": n,
            "logprobs": self.top_k,
            "temperature": temperature,
            "ignore_eos": True,
            "stream": self.stream,
        }
        if self.token_ids:
            body["prompt"] = prefix
            body["return_tokens_as_token_ids"] = True
        else:
            bos = self.tokenizer.bos_token_id
            body["prompt"] = self.tokenizer.decode(
                prefix[1:] if prefix and prefix[0] == bos else prefix, skip_special_tokens=False
            )
        if temperature > 0:
            body["top_p"] = top_p
            if top_k:
                body["top_k"] = top_k
            if seed is not None:  # each chunk's draw depends on the seed and where it starts
                body["seed"] = (seed * 1_000_003 + len(prefix)) % 2**31
        return body

    def _notify(self) -> None:
        with self._cond:
            self._arrived += 1
            self._cond.notify_all()

    async def _fill(self, st: _RemoteState, ch: _Chunk, body: dict) -> None:
        """Run the request and put what arrives into ``ch`` (retrying a request that failed
        before anything arrived)."""
        import httpx

        error: RemoteModelError | None = None
        content = json.dumps(body)
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.retried += 1
                    await asyncio.sleep(
                        getattr(error, "retry_after", None) or self.backoff * 2 ** (attempt - 1)
                    )
                self.requests += 1
                try:
                    if self.stream:
                        async with self._client.stream(
                            "POST", "/completions", content=content
                        ) as r:
                            if r.status_code != 200:
                                await r.aread()
                                error = self._status_error(r)
                                continue
                            async for line in r.aiter_lines():
                                if not line.startswith("data:"):
                                    continue
                                data = line[5:].strip()
                                if data == "[DONE]" or ch.closed:
                                    break
                                if self._add(ch, json.loads(data)):
                                    return
                    else:
                        r = await self._client.post("/completions", content=content)
                        if r.status_code != 200:
                            error = self._status_error(r)
                            continue
                        try:
                            answer = r.json()
                        except ValueError:
                            raise RemoteModelError(
                                f"{self.base_url} answered with no JSON: {r.text[:200]!r}"
                            ) from None
                        self._add(ch, answer)
                    if not ch.tops:
                        raise self._no_logprobs()
                    return
                except httpx.TimeoutException as e:
                    error = RemoteTimeoutError(
                        f"{self.base_url} did not answer within {self.timeout:g} s "
                        f"({type(e).__name__}); raise RemoteModel(timeout=...) or check the "
                        "server's load"
                    )
                except httpx.TransportError as e:
                    error = RemoteModelError(
                        f"cannot reach {self.base_url} ({type(e).__name__}: {e})"
                    )
                if ch.tops:  # part arrived: the next request starts where it broke off
                    return
            assert error is not None
            raise error
        except asyncio.CancelledError:
            ch.error = RemoteModelError("the request was cancelled")
            raise
        except BaseException as e:
            ch.error = e
        finally:
            ch.done = True
            self._notify()

    def _status_error(self, r: Any) -> RemoteModelError:
        """The error of a non-200 answer: retried (429, 5xx) or raised at once (the others)."""
        msg = _server_message(r)
        if r.status_code == 429 or r.status_code >= 500:
            error = RemoteModelError(
                f"{self.base_url} answered {r.status_code} {self.retries + 1} times: {msg}",
                r.status_code,
            )
            ra = r.headers.get("retry-after")
            error.retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            return error
        raise RemoteModelError(
            f"{self.base_url} refused the request ({r.status_code}): {msg}{self._hint(msg)}",
            r.status_code,
        )

    def _no_logprobs(self) -> RemoteModelError:
        return RemoteModelError(
            f"{self.base_url} answered without top log-probs for model {self.model!r}: "
            "RemoteModel needs a /v1/completions endpoint that returns 'logprobs' with "
            "'top_logprobs' for every token (vLLM and SGLang do; llama.cpp: set n_probs)"
        )

    def _hint(self, msg: str) -> str:
        m = msg.lower()
        if "logprob" in m:
            return (
                f"; RemoteModel asks for top_k={self.top_k} log-probs per token: start "
                f"vLLM with --max-logprobs {self.top_k} or more, or lower "
                "RemoteModel(top_k=...)"
            )
        if "prompt" in m and self.token_ids:
            return "; if the server takes only text prompts, use RemoteModel(token_ids=False)"
        return ""

    def _add(self, ch: _Chunk, answer: Any) -> bool:
        """Put the tokens of a completions answer (or a streamed piece of one) into ``ch``;
        True when the chunk cannot go on (a token the local tokenizer does not know)."""
        if isinstance(answer, dict) and answer.get("error"):
            raise RemoteModelError(
                f"{self.base_url} failed while answering: {_server_message_of(answer)}"
            )
        try:
            choices = answer["choices"]
        except (KeyError, TypeError):
            raise RemoteModelError(
                f"{self.base_url} answered with no completion choice: {str(answer)[:200]!r}"
            ) from None
        if not choices:  # a usage-only piece of a stream
            return False
        choice = choices[0]
        lp = choice.get("logprobs") or {}
        tokens, tops = lp.get("tokens"), lp.get("top_logprobs")
        if self.stream and not tokens:
            return False  # a piece with no token (the end; text held back until then)
        if not tokens or not tops or len(tops) != len(tokens) or any(t is None for t in tops):
            raise self._no_logprobs()
        # keyed by text, tokens of equal text collapse into one entry: only ids are counted
        want = min(self.top_k, self._width) if self.token_ids else 1
        for tok, top in zip(tokens, tops):
            if len(top) < want:
                raise RemoteModelError(
                    f"{self.base_url} returned {len(top)} top log-probs where {want} were "
                    f"asked (position {len(ch.tops)}): the server caps them (vLLM: "
                    "--max-logprobs); lower RemoteModel(top_k=...) to what it allows"
                )
            pairs: dict[int, float] = {}
            for k, v in top.items():
                i = self._token_id(k)
                if i is not None and v is not None and i < self._width:
                    pairs[i] = max(float(v), pairs.get(i, -math.inf))
            if not pairs:
                raise RemoteModelError(
                    f"{self.base_url} returned top log-probs of tokens the local tokenizer of "
                    f"{self.model!r} does not know ({list(top)[:5]}): pass the served model's "
                    "tokenizer, or use token ids (RemoteModel(token_ids=True))"
                )
            t = self._token_id(tok)
            ch.tops.append((list(pairs), list(pairs.values())))
            if t is None:  # text that is no one token's (a piece of a character): the chunk
                self._notify()  # ends after this position's distribution
                return True
            ch.tokens.append(t)
        self._notify()
        return False

    def _token_id(self, token: str) -> int | None:
        if token.startswith("token_id:"):
            try:
                return int(token[9:])
            except ValueError:
                return None
        if self._text_ids is None:  # text mode: the ids whose decoded text is unique
            seen: dict[str, int | None] = {}
            for i in range(len(self.tokenizer)):
                text = self.tokenizer.decode([i])
                seen[text] = None if text in seen else i
            self._text_ids = {t: i for t, i in seen.items() if i is not None}
        return self._text_ids.get(token)


def _server_message(r: Any) -> str:
    """The error message of a server's answer (OpenAI's ``{"error": {"message": ...}}``,
    FastAPI's ``{"detail": ...}``, or the text)."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    return _server_message_of(body)


def _server_message_of(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("detail"):
            return str(body["detail"])
        if body.get("message"):
            return str(body["message"])
    return str(body)[:300]
