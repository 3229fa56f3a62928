"""The decoding loop. ``Generation`` holds all per-sequence state; ``Generation.run()`` is its
stream of steps, written as a coroutine: it yields what it needs from outside (``Forward``: run a
model on some tokens; ``Fetch``: read a tensor back to the host) and the ``StreamEvent``s it makes.
A driver answers the requests: ``Generation.events()`` answers one sequence's requests one by one;
the scheduler (``blendin_llm.scheduler``) answers the requests of many sequences together, one
batched forward pass per model and one host read per round, which is continuous batching.

Per step: the base gives its next-token distribution (its KV cache grows by one token). The strategy
decides from the base's top-1 probability whether to consult the guides. A consulted guide first
catches up, in one forward pass, on every token it has not seen yet (its prompt, on first use, and
the tokens chosen while it was skipped); then the strategy combines the distributions and a token
is chosen. Guides that are not consulted cost nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch

from .backends.base import ModelBackend, SequenceState
from .config import BlendConfig, SamplingParams
from .filters import StopMatcher
from .reliability import ReliabilityTracker
from .results import BlendResult, StreamEvent, TokenLogprob, TopLogprob, TraceEntry, Usage
from .sampling import SeedStream, apply_processors, build_processors, sample
from .strategies import ConsultPolicy, StepView, Strategy
from .text import IncrementalDetokenizer
from .tools import ToolCallCapture, parse_tool_calls
from .uncertainty import NEGENTROPY_K
from .vocab import IncrementalTokenizer, VocabMap, common_prefix, complete_utf8

_EPS = 1e-20


class Forward(NamedTuple):
    """A request to run ``backend`` on ``ids`` (appended to ``state``); the answer is the logits of
    the last ``n_last`` positions (``ModelBackend.forward``). ``step``: the base's forward that
    starts a decoding step; a batching driver runs these together, once every sequence got there."""

    backend: ModelBackend
    state: SequenceState
    ids: list[int]
    n_last: int = 1
    step: bool = False


class Fetch(NamedTuple):
    """A request to read a 1-D tensor back to the host; the answer is ``tensor.tolist()``. A
    batching driver reads the tensors of every sequence at once (one device sync per round)."""

    tensor: torch.Tensor


_T = TypeVar("_T")

# a coroutine of requests: yields ``Forward`` and ``Fetch``, is sent their answers, returns a _T
Steps = Generator[Forward | Fetch, Any, _T]


def answer(item: Forward | Fetch) -> Any:
    """The answer to one request, computed alone (no batching)."""
    if isinstance(item, Fetch):
        return item.tensor.tolist()
    return item.backend.forward(item.state, item.ids, item.n_last)


def complete(steps: Steps[_T]) -> _T:
    """Run a coroutine of requests (e.g. a guide's ``probs``) to its return value, answering each
    request alone."""
    try:
        item = next(steps)
        while True:
            item = steps.send(answer(item))
    except StopIteration as stop:
        return stop.value


class _Guide:
    """A guide that shares the base's vocabulary: it consumes the committed token ids themselves.

    Tokens chosen while it is not consulted wait in ``pending`` and are consumed, with its prompt on
    first use, in one forward pass when it is next consulted."""

    __slots__ = ("backend", "state", "pending", "eos")

    def __init__(self, backend: ModelBackend, prompt_ids: list[int]) -> None:
        self.backend = backend
        self.state: SequenceState = backend.new_state()
        self.pending: list[int] = list(prompt_ids)
        self.eos = backend.eos_token_ids

    def push(self, token: int) -> None:
        self.pending.append(token)

    def probs(self, answer_text: str, width: int) -> Steps[tuple[torch.Tensor, int]]:
        """Catch up on everything not seen yet; (distribution over base ids [width], tokens run)."""
        n = len(self.pending)
        logits = yield Forward(self.backend, self.state, self.pending)
        self.pending = []
        probs = torch.softmax(logits, -1)
        if probs.shape[0] > width:  # ids past the base's width are padding: renormalise without
            probs = probs[:width] / probs[:width].sum()
        elif probs.shape[0] < width:
            probs = torch.nn.functional.pad(probs, (0, width - probs.shape[0]))
        return probs, n


class _CrossVocabGuide:
    """A guide with its own vocabulary: it reads the committed answer as bytes, in its own tokens.

    Its tokens for the answer (``path``) follow the guide's own way of writing it. When consulted,
    the first token of the new text is the guide's most likely reading of it (``VocabMap.reading``,
    from its distribution at the end of the path, which it has already): where the guide chose the
    text itself, its own tokens are kept. (A re-tokenization from scratch would, for example, merge
    SmolLM2's ``"\\n"`` + ``"\\n"`` into ``"\\n\\n"``, after which it writes something
    else.) The rest of the new text, which the guide did not choose, is tokenized as the guide's
    tokenizer does, with byte tokens for bytes that do not make a whole character yet. Where the
    text ends inside the guide's likely token, its next-text distribution is marginalised over the
    guide tokens that extend the text (``project_healed``, ``project_extensions``). The path only
    grows; a consult runs one forward pass over the new tokens after rolling back the tentative
    last token(s)."""

    __slots__ = (
        "backend",
        "state",
        "prompt",
        "vmap",
        "eos",
        "last",
        "path",
        "head",
        "end",
        "seen",
        "committed",
    )

    def __init__(self, backend: ModelBackend, prompt_ids: list[int], vmap: VocabMap) -> None:
        self.backend = backend
        self.state: SequenceState = backend.new_state()
        self.prompt = list(prompt_ids)
        self.vmap = vmap
        m = vmap.guide_to_base
        self.eos = frozenset(int(m[e]) for e in backend.eos_token_ids if e < m.shape[0])
        self.last: torch.Tensor | None = None  # the last distribution, in base space
        self.seen: bytes | None = None  # the answer bytes it was computed for
        self.committed = bytearray()  # the bytes of the committed base tokens
        self.path: list[int] = []  # the guide's tokens for the answer's first len(head) bytes
        self.head = b""
        self.end: torch.Tensor | None = None  # the guide's distribution after prompt + path

    def push(self, token: int) -> None:
        """A committed base token: its bytes count even before they make a whole character."""
        b = self.vmap.base_bytes
        self.committed += (b[token] if token < len(b) else None) or b""

    def probs(self, answer_text: str, width: int) -> Steps[tuple[torch.Tensor, int]]:
        """(distribution over base ids [width], tokens run), as a coroutine (see ``Forward``)."""
        data = bytes(self.committed)  # with bytes that do not make a whole character (yet)
        if not data.decode("utf-8", "replace").startswith(answer_text):
            data = answer_text.encode()  # a decoder that is more than the tokens' bytes
        if data == self.seen and self.last is not None:
            return self.last, 0  # nothing new since the last consult
        self.seen = data
        vm = self.vmap
        if not data.startswith(self.head):  # not a continuation of what was read so far
            self.path, self.head, self.end = [], b"", None
        rest = data[len(self.head) :]
        if not rest and self.end is not None:
            self.last = vm.project(self.end, width)
            return self.last, 0
        first: list[int] = []
        if rest and self.end is not None:
            t, inside = vm.reading(self.end, rest)
            if inside:  # the text ends inside the guide's likely token: nothing to fix yet
                return (yield from self._inside(rest, width))
            if t >= 0:
                first, rest = [t], rest[len(self._bytes([t])) :]
        tail = self._encode(rest)
        # the tail's tokens up to the last whole character before its last token are fixed; the
        # last one (and any that end inside a character) stay tentative: more text may extend them
        fixed = len(tail) - 1 if tail else 0
        while fixed > 0 and not complete_utf8(self.head[-4:] + self._bytes(first + tail[:fixed])):
            fixed -= 1
        new_path = self.path + first + tail[:fixed]
        wanted = self.prompt + new_path + tail[fixed:]
        n_last = len(tail) - fixed + 1 if tail else 1  # rows: the end of the new path .. the last
        logits, ran = yield from self._run(wanted, n_last)
        rows = torch.softmax(logits.reshape(n_last, -1), -1)
        if tail:
            self.last = vm.project_healed(rows[-2], rows[-1], tail[-1], width)
        else:
            self.last = vm.project(rows[-1], width)
        self.head += self._bytes(first + tail[:fixed])
        self.path, self.end = new_path, rows[0]
        return self.last, ran

    def _inside(self, rest: bytes, width: int) -> Steps[tuple[torch.Tensor, int]]:
        """The committed ``rest`` after the path ends inside the guide's likely next token."""
        assert self.end is not None  # called where the path's end distribution is known
        exact = self.vmap.guide_token(rest)
        if exact is None:
            self.last = self.vmap.project_extensions(self.end, rest, width)
            return self.last, 0
        logits, ran = yield from self._run(self.prompt + self.path + [exact], 1)
        self.last = self.vmap.project_healed(self.end, torch.softmax(logits, -1), exact, width)
        return self.last, ran

    def _encode(self, data: bytes) -> list[int]:
        """The guide's tokenization of ``data``; bytes that are not (yet) a whole character as
        the guide's byte tokens."""
        ids: list[int] = []
        pos = 0
        while pos < len(data):
            try:
                text, bad = data[pos:].decode(), len(data)
                end = bad
            except UnicodeDecodeError as e:
                text, bad, end = data[pos : pos + e.start].decode(), pos + e.start, pos + e.end
            if text:
                ids += self.backend.tokenizer(text, add_special_tokens=False)["input_ids"]
            for k in range(bad, end):  # (a vocabulary without byte tokens drops them)
                if (t := self.vmap.guide_token(data[k : k + 1])) is not None:
                    ids.append(t)
            pos = end
        return ids

    def _bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.vmap._g_bytes[i] or b"" for i in ids)

    def _run(self, wanted: list[int], n_last: int) -> Steps[tuple[torch.Tensor, int]]:
        """Bring the cache to ``wanted`` (rolling back what differs); (the logits of its last
        ``n_last`` positions, recomputed where they are cached already; tokens run)."""
        keep = common_prefix(self.state.tokens, wanted)
        start = min(keep, len(wanted) - n_last)
        if start < len(self.state):
            self.backend.rollback(self.state, start)
        new = wanted[start:]
        logits = yield Forward(self.backend, self.state, new, n_last)
        return logits, len(new)


@dataclass
class _Choice:
    token: int
    prob: float
    base_prob: float
    base_top1: float
    consulted: bool
    base_top: list[float]  # the base's top-K log-probs (uncertainty features)
    base_lp: float  # the chosen token's log-prob under the base
    alpha: float | None = None
    guide_prob: float | None = None
    logprob: TokenLogprob | None = None
    final_top: list[float] | None = None  # the same for the final distribution, when it differs
    lp: float | None = None  # ... and in the final distribution
    steered: bool = False  # the token differs from the one the base alone would have chosen


def _stop_matcher(stops: Any) -> StopMatcher | None:
    """The StopMatcher of an answer's text filter (itself, or one in a FilterChain)."""
    if isinstance(stops, StopMatcher):
        return stops
    return next((f for f in getattr(stops, "filters", ()) if isinstance(f, StopMatcher)), None)


class _Mix(NamedTuple):
    """What a consulted step computed (all in the base's token space)."""

    probs: torch.Tensor  # the strategy's blended distribution [V]
    base: torch.Tensor  # the base's distribution [V]
    guides: torch.Tensor  # the guides' distributions [G, V]
    alphas: torch.Tensor  # [G]
    guide_top1: torch.Tensor  # [G]
    guide_argmax: torch.Tensor  # [G]


def js_divergence_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between p [V] and each row of q [G, V]; values in [0, 1]."""
    m = 0.5 * (p + q)
    log_m = (m + _EPS).log()
    kl_p = (p * ((p + _EPS).log() - log_m)).sum(-1)
    kl_q = (q * ((q + _EPS).log() - log_m)).sum(-1)
    return (0.5 * (kl_p + kl_q) / math.log(2)).clamp(0.0, 1.0)


class Generation:
    """One sequence being decoded, with every piece of its state in one place."""

    def __init__(
        self,
        *,
        base: ModelBackend,
        guides: list[ModelBackend],
        vocab_maps: list[VocabMap | None],
        strategy: Strategy,
        config: BlendConfig,
        params: SamplingParams,
        prompt_ids: list[list[int]],
        budget: int,
        model_name: str,
        trace: bool = False,
        stops: Any = None,
        prefix: str = "",
        tool_capture: ToolCallCapture | None = None,
        tools: Sequence[dict] = (),
        guide_weights: list[float] | None = None,
        mitigations: Sequence[str] = (),
    ) -> None:
        """``stops``: the text filter of the answer (default: ``StopMatcher(params.stop)``);
        ``prefix``: text the answer starts with, already in every model's prompt (a prefill);
        ``tool_capture``: the filter (in ``stops``) that captures tool
        calls, parsed against ``tools`` at the end; ``guide_weights``: run-time mitigation
        weights on the guides' alphas; ``mitigations``: notes for the reliability record."""
        self.base = base
        self.strategy = strategy
        self.config = config
        self.params = params
        self.budget = budget
        self.model_name = model_name
        self.base_prompt = prompt_ids[0]
        self.base_state = base.new_state()
        self.guides = [
            _Guide(g, ids) if vm is None else _CrossVocabGuide(g, ids, vm)
            for g, ids, vm in zip(guides, prompt_ids[1:], vocab_maps)
        ]
        self.answer_text = ""  # the decoded answer so far, as cross-vocabulary guides read it
        # Once a guide with another vocabulary has changed a choice (a token the base alone would
        # not have chosen), the base may have committed a split it would never make itself (the
        # guide's "J" + "oe" for the base's "Joe"); from then on the base reads the answer in its
        # own tokenization (see _heal). Up to then the answer is the base's own, token for token.
        self.cross = any(vm is not None for vm in vocab_maps)
        self.healing = False
        self.base_stream = IncrementalTokenizer(base.tokenizer) if self.cross else None
        self.raw_tail: list[int] = []
        self.base_heals = 0
        self.vocab = base.logits_width
        no_eos = params.ignore_eos
        self.base_eos = frozenset() if no_eos else base.eos_token_ids
        self.guide_eos = frozenset().union(*(() if no_eos else g.eos for g in self.guides))
        self.generated: list[int] = []
        self.guide_tokens = 0
        self.detok = IncrementalDetokenizer(base.tokenizer)
        self.stops = stops if stops is not None else StopMatcher(params.stop)
        self.prefix = prefix
        self.top_logprobs = params.logprobs
        self.tool_capture = tool_capture
        self.tools = tools
        self.tracker = ReliabilityTracker(
            config,
            strategy.name,
            [g.name for g in guides],
            gated=type(strategy).consult is Strategy.consult,
            trace=trace,
            weights=guide_weights,
            mitigations=list(mitigations),
        )
        w = guide_weights
        self.guide_weight = (
            None
            if w is None or all(x == 1.0 for x in w)
            else torch.tensor(w, dtype=torch.float32, device=base.device)
        )
        cap = config.mitigation.intervention_cap if config.mitigation is not None else None
        self.consult = ConsultPolicy(strategy, cap)  # the gate and the intervention cap
        self.uniforms = SeedStream(params.seed)
        # models known only by their top-k log-probs (remote servers): the step's choice is made
        # among the union of the top-k lists of the distributions that took part (_support)
        ks = [m.top_k_approximation for m in (base, *guides)]
        self.approx_k = min((k for k in ks if k is not None), default=None)
        self.base_approx = ks[0] is not None
        self.guides_approx = any(k is not None for k in ks[1:])
        base.set_sampling(
            self.base_state, params.temperature, params.top_p, params.top_k, params.seed
        )
        # the penalties (and the mask of ids without a token): none when all are off
        self.processors = build_processors(params, self.vocab, base.n_tokens, base.device)
        self._base_logits: torch.Tensor | None = None
        # the log-distribution the last token was chosen from (after blending and penalties)
        self.final_logdist: torch.Tensor | None = None
        # one top-k of the base per step serves the features (top NEGENTROPY_K), the agreement
        # (top agreement_top_k) and greedy decoding (top 1)
        self.top_k = min(max(NEGENTROPY_K, config.agreement_top_k), self.vocab)

    # -- one step (the driver runs the coroutine under inference mode) ------------------------
    def _advance(self, last_token: int | None, text_grew: bool = True) -> Steps[None]:
        if last_token is None:
            ids = self.base_prompt
        elif self.healing:
            ids = self._heal(last_token, text_grew)
        else:
            ids = [last_token]
        self._base_logits = yield Forward(self.base, self.base_state, ids, step=True)
        if last_token is not None:
            for g in self.guides:
                g.push(last_token)

    def _heal(self, token: int, text_grew: bool) -> list[int]:
        """The base's tokens for the answer so far: its own tokenization of the text, plus the
        committed tokens that do not make a whole character yet. Rolls the base's cache back to the
        first token that differs and returns the tokens to feed (usually just ``[token]``)."""
        assert self.base_stream is not None  # healing happens with cross-vocabulary guides only
        self.raw_tail = [] if text_grew else self.raw_tail + [token]
        self.base_stream.update(self.answer_text)
        wanted = (self.base_stream.ids + self.raw_tail) or [token]
        fed = self.base_state.tokens
        p = len(self.base_prompt)
        keep = common_prefix(fed, wanted, offset=p)
        if keep == len(wanted):  # nothing new to feed: recompute the last position
            keep -= 1
        if p + keep < len(fed):
            self.base_heals += 1
            self.base.rollback(self.base_state, p + keep)
        return wanted[keep:]

    def _choose(self) -> Steps[_Choice]:
        """Choose the next token. The one place where the final log-distribution exists: the
        base's log-probs, or the strategy's blend when the guides were consulted, then the
        penalties (``self.processors``); the token is its argmax, or a draw with this step's
        uniform (``SeedStream``), and ``self.final_logdist`` keeps it for observers."""
        assert self._base_logits is not None  # set by _advance
        logp = torch.log_softmax(self._base_logits, -1)
        top_v, top_i = torch.topk(logp, self.top_k)
        # one device sync (shared by the batch): the base's top-k log-probs (uncertainty
        # features, agreement) and its top token
        head = yield Fetch(torch.cat([top_v, top_i[:1].to(top_v.dtype)]))
        base_top = head[: min(NEGENTROPY_K, self.top_k)]
        base_top1 = math.exp(head[0])
        top_lp, top_id = top_v[0], top_i[0]
        mix = None
        if self.guides and self.consult(base_top1):
            mix = yield from self._mix(logp, top_lp)
        procs = self.processors
        logd = logp if mix is None else (mix.probs + _EPS).log()
        u = None if self.params.greedy else self.uniforms.uniform(len(self.generated))
        approx = self.base_approx or (mix is not None and self.guides_approx)
        if approx and (mix is not None or procs or u is not None):
            logd = self._support(logd, logp, mix)
        if procs:
            logd = apply_processors(procs, logd)
        self.final_logdist = logd
        proposal = None
        if u is not None and mix is None and not procs:  # the base's own draw, when it made one
            proposal = self.base.proposal(self.base_state)
        if proposal is not None:
            tok = torch.tensor(proposal, device=logd.device)
        elif u is not None:
            tok = sample(logd, self.params, u)
        elif procs:
            tok = logd.argmax()
        else:  # the same token, read off the distribution it comes from
            tok = top_id if mix is None else mix.probs.argmax()
        own = None
        if mix is not None and self.cross and not self.healing:
            # would the base alone have chosen otherwise? Until a guide of another vocabulary
            # changes a choice the answer is the base's own, token for token (see _heal)
            own = self._own_choice(logp, top_id, u)
            if torch.equal(mix.probs, mix.base):  # no guide had a say (e.g. alpha = 0)
                tok = own
        if mix is None:
            if self.params.greedy and not procs:  # the base's own top token: nothing to look up
                c = _Choice(
                    int(head[-1]),
                    base_top1,
                    base_top1,
                    base_top1,
                    consulted=False,
                    base_top=base_top,
                    base_lp=head[0],
                    lp=head[0],
                )
            else:
                row = torch.stack([tok.to(logd.dtype), logd[tok], logp[tok]])
                if procs:  # the penalties made the final distribution differ from the base's
                    row = torch.cat([row, torch.topk(logd, len(base_top)).values])
                vals = yield Fetch(row)
                token, lp, base_lp = vals[:3]
                c = _Choice(
                    int(token),
                    math.exp(lp),
                    math.exp(base_lp),
                    base_top1,
                    consulted=False,
                    base_top=base_top,
                    base_lp=base_lp,
                    lp=lp,
                    final_top=vals[3:] if procs else None,
                )
        else:
            c = yield from self._consulted(tok, mix, logd, logp, top_i, base_top1, base_top, own)
        if self.top_logprobs is not None:
            c.logprob = yield from self._logprob(logd, c.token)
        for p in procs:
            p.push(c.token)
        return c

    def _support(self, logd: torch.Tensor, logp: torch.Tensor, mix: _Mix | None) -> torch.Tensor:
        """``logd`` renormalised over the union of the top-k lists (k: ``approx_k``) of the
        distributions that took part in the step. A remote model's distribution is known on its
        top-k only (the rest is spread evenly, see ``ModelBackend.top_k_approximation``); tokens
        outside every list are never chosen, so the spread mass cannot turn into a random token.
        The approximation leaves a greedy choice unchanged unless the blend's best token is in
        no model's top k."""
        assert self.approx_k is not None  # some model of the step is approximate
        k = min(self.approx_k, logp.shape[-1])
        keep = torch.zeros_like(logp, dtype=torch.bool)
        keep[torch.topk(logp, k).indices] = True
        if mix is not None:
            keep[torch.topk(mix.guides, k, dim=-1).indices.reshape(-1)] = True
        return torch.log_softmax(logd.masked_fill(~keep, -math.inf), -1)

    def cancel(self) -> None:
        """The sequence was abandoned (called from the caller's thread): its models stop their
        work in flight (``ModelBackend.cancel``; a remote request is closed)."""
        self.base.cancel(self.base_state)
        for g in self.guides:
            g.backend.cancel(g.state)

    def _own_choice(
        self, logp: torch.Tensor, top_id: torch.Tensor, u: float | None
    ) -> torch.Tensor:
        """The token the base alone would choose at this step: the argmax, or the draw with this
        step's uniform ``u``, of its own distribution after the penalties. A mixture that is the
        base's own distribution thus reproduces ``base_only`` token for token, sampled too."""
        procs = self.processors
        if u is None and not procs:
            return top_id
        own = apply_processors(procs, logp) if procs else logp
        return own.argmax() if u is None else sample(own, self.params, u)

    def _logprob(self, logdist: torch.Tensor, token: int) -> Steps[TokenLogprob]:
        """The chosen token's log-prob in the final distribution, and the top alternatives."""
        assert self.top_logprobs is not None  # called only when log-probs were asked for
        pieces = self.base.token_pieces()
        k = min(self.top_logprobs, logdist.shape[0])
        vals, ids = torch.topk(logdist, k) if k else (logdist[:0], logdist[:0].long())
        row = yield Fetch(torch.cat([logdist[token].reshape(1), vals, ids.to(vals.dtype)]))
        return TokenLogprob(
            token=pieces[token][0],
            bytes=pieces[token][1],
            logprob=row[0],
            id=token,
            top_logprobs=[
                TopLogprob(token=pieces[int(i)][0], bytes=pieces[int(i)][1], logprob=v, id=int(i))
                for i, v in zip(row[1 + k :], row[1 : 1 + k])
            ],
        )

    def _mix(self, logp: torch.Tensor, top_lp: torch.Tensor) -> Steps[_Mix]:
        """Consult the guides and blend their distributions with the base's."""
        p_base = logp.exp()
        rows: list[torch.Tensor] = []
        for g in self.guides:
            probs, ran = yield from g.probs(self.answer_text, self.vocab)
            rows.append(probs)
            self.guide_tokens += ran
        guide_probs = torch.stack(rows)
        g_top1, g_arg = guide_probs.max(-1)
        view = StepView(
            p_base, guide_probs, top_lp.exp(), g_top1, g_arg, p_base[g_arg], self.guide_weight
        )
        mixed, alphas = self.strategy.combine(view)
        return _Mix(mixed, p_base, guide_probs, alphas, g_top1, g_arg)

    def _consulted(
        self,
        tok: torch.Tensor,
        mix: _Mix,
        logd: torch.Tensor,
        logp: torch.Tensor,
        top_i: torch.Tensor,
        base_top1: float,
        base_top: list[float],
        own: torch.Tensor | None,
    ) -> Steps[_Choice]:
        """The choice at a consulted step, with the guides' signals for the reliability record
        (read back in one transfer); ``own``: the base's own choice, when it matters."""
        mixed, p_base, guide_probs, alphas, g_top1, g_arg = mix
        top_id = top_i[0]
        base_topk = top_i[: min(self.config.agreement_top_k, self.top_k)]
        agree1 = (g_arg == top_id).to(p_base.dtype)
        agreek = (g_arg[:, None] == base_topk[None, :]).any(-1).to(p_base.dtype)
        js = js_divergence_bits(p_base, guide_probs)
        prob = logd[tok].exp() if self.processors else mixed[tok]
        head = torch.stack([tok.to(p_base.dtype), prob, p_base[tok], guide_probs[:, tok].mean()])
        final_top = torch.topk(logd, len(base_top)).values
        own_t = (own if own is not None else tok).to(p_base.dtype).reshape(1)
        # one device sync for the step's numbers (shared by the batch)
        stats = yield Fetch(torch.cat([head, alphas, g_top1, agree1, agreek, js, final_top, own_t]))
        own_id = int(stats.pop())
        n = len(self.guides)
        token, prob, base_prob, guide_prob = stats[:4]
        cols = [stats[4 + i * n : 4 + (i + 1) * n] for i in range(5)]
        self.tracker.consulted(*cols)
        return _Choice(
            int(token),
            prob,
            base_prob,
            base_top1,
            consulted=True,
            alpha=sum(cols[0]) / n,
            guide_prob=guide_prob,
            base_top=base_top,
            final_top=stats[4 + 5 * n :],
            base_lp=math.log(max(base_prob, 1e-30)),
            lp=math.log(max(prob, 1e-30)),
            steered=own is not None and int(token) != own_id,
        )

    def release(self) -> None:
        """Let go of the models' caches (after the last event, or when abandoned): a finished
        sequence that is still referenced (a result list, a traceback) keeps no keys and values."""
        self.base.release(self.base_state)
        self.base_state.cache = None
        for g in self.guides:
            g.backend.release(g.state)
            g.state.cache = None

    # -- the stream --------------------------------------------------------------------------
    def events(self) -> Iterator[StreamEvent]:
        """This sequence's events, decoded alone (its requests answered one by one)."""
        steps = self.run()
        try:
            while True:
                with torch.inference_mode():
                    item = steps.send(None)
                    while not isinstance(item, StreamEvent):
                        item = steps.send(answer(item))
                yield item
                if item.done:
                    return
        except StopIteration:
            return
        finally:
            steps.close()

    def run(self) -> Generator[Forward | Fetch | StreamEvent, Any, None]:
        """The decoding coroutine: yields ``Forward`` and ``Fetch`` requests (send the answer
        back) and ``StreamEvent``s (send None); the last event has ``done=True``."""
        t0 = time.perf_counter()
        finish, stop_seq, ended = "length", None, False
        text_parts: list[str] = []
        logprobs: list[TokenLogprob] | None = [] if self.top_logprobs is not None else None
        tracker, trace = self.tracker, self.tracker.trace
        lead = self.stops.push(self.prefix)[0] if self.prefix else ""  # released with token 1
        yield from self._advance(None)
        starts: list[int] = []  # where each token's text starts in the decoded text
        answer_end: int | None = None  # where the answer ends in it (a stop string starts)
        eos_end = False  # the answer's last token is an EOS
        for index in range(self.budget):
            c = yield from self._choose()
            self.generated.append(c.token)
            tracker.step(c.base_top, c.base_lp, c.final_top, c.lp)
            starts.append(len(self.answer_text))
            eos = c.token in self.base_eos or (c.consulted and c.token in self.guide_eos)
            if eos:
                finish, eos_end = "stop", True
                stop_seq = self.base.tokenizer.convert_ids_to_tokens(c.token)
                delta = emit = ""
                hit = None
            else:
                delta = self.detok.push(c.token)
                self.answer_text += delta
                emit, hit = self.stops.push(delta)
            if trace is not None:
                trace.append(
                    TraceEntry(
                        index=index,
                        token_id=c.token,
                        text=delta,
                        source="blend" if c.consulted else "base",
                        alpha=c.alpha,
                        base_top1=c.base_top1,
                        base_prob=c.base_prob,
                        guide_prob=c.guide_prob,
                        prob=c.prob,
                    )
                )
            if eos:
                break
            if emit or hit is None:
                emit, lead = lead + emit, ""
                text_parts.append(emit)
                if logprobs is not None:
                    assert c.logprob is not None  # _choose sets it when log-probs were asked for
                    logprobs.append(c.logprob)
                yield StreamEvent(
                    text=emit,
                    token_id=c.token,
                    index=index,
                    consulted=c.consulted,
                    alpha=c.alpha,
                    prob=c.prob,
                    logprob=c.logprob,
                )
            if hit is not None:  # a stop string ("" when a filter ended the answer)
                finish, stop_seq, ended = "stop", hit or None, True
                if hit:
                    answer_end = (
                        len(self.answer_text)
                        - len(hit)
                        - len(getattr(_stop_matcher(self.stops), "after", ""))
                    )
                break
            if index + 1 < self.budget:
                self.healing = self.healing or c.steered
                yield from self._advance(c.token, bool(delta))

        tail = lead
        if not ended:  # release what was held back (an incomplete character, a stop prefix)
            flushed = self.detok.flush()
            if trace and flushed:  # held back as an incomplete character until the end
                trace[-1].text += flushed
            emit, hit = self.stops.push(flushed)
            tail += emit
            if hit is not None:
                finish, stop_seq = "stop", hit or stop_seq
                if hit:
                    answer_end = (
                        len(self.answer_text)
                        + len(flushed)
                        - len(hit)
                        - len(getattr(_stop_matcher(self.stops), "after", ""))
                    )
            else:
                tail += self.stops.flush()
        text_parts.append(tail)
        # only the answer counts: tokens whose text starts where a stop string starts (or later)
        # were decoded to recognise it, and are neither counted nor scored
        n = len(self.generated) if answer_end is None else sum(1 for s in starts if s < answer_end)
        if logprobs is not None:  # the answer's tokens only, as for the usage
            del logprobs[n:]
        prompt_n = len(self.base_prompt)
        result = BlendResult(
            text="".join(text_parts),
            finish_reason=finish,
            stop_sequence=stop_seq,
            token_ids=list(self.generated),
            usage=Usage(
                prompt_tokens=prompt_n,
                completion_tokens=n,
                total_tokens=prompt_n + n,
                guide_tokens_computed=self.guide_tokens,
            ),
            reliability=tracker.finish(
                capped=self.consult.capped,
                intervention_cap=self.consult.cap,
                answer_tokens=n,
                stopped=finish == "stop",
                eos=eos_end,
                top_k_approximation=self.approx_k,
            ),
            model=self.model_name,
            elapsed_s=time.perf_counter() - t0,
            logprobs=logprobs,
        )
        if self.tool_capture is not None and self.tool_capture.captured:
            result.tool_calls, result.invalid_tool_calls = parse_tool_calls(
                self.tool_capture.captured, self.tools, finished=finish != "length"
            )
            if result.tool_calls:
                result.finish_reason = "tool_calls"
        yield StreamEvent(text=tail, done=True, result=result)
