"""The decoding loop. ``Generation`` holds all per-sequence state; ``Generation.run()`` is its
stream of steps, written as a coroutine: it yields what it needs from outside (``Forward``: run a
model on some tokens; ``Fetch``: read a tensor back to the host) and the ``StreamEvent``s it makes.
A driver answers the requests: ``Generation.events()`` answers one sequence's requests one by one;
the scheduler (``blendin_llm.scheduler``) answers the requests of many sequences together, one
batched forward pass per model and one host read per round, which is continuous batching.

Per step: the base gives its next-token distribution (its KV cache grows by one token). The
consult policy (``ConsultPolicy``: the gamma gate and the intervention cap) decides from the base's
top-1 probability whether to consult the guides. A consulted guide (``blendin_llm.guides``) first
catches up, in one forward pass, on every token it has not seen yet (its prompt, on first use, and
the tokens chosen while it was skipped); then the strategy's ``combine`` blends the distributions,
the penalties apply (``blendin_llm.sampling``) and the sampler chooses a token. The token joins the
answer (text filters, ``StoppingCriteria``) and the observers record the step
(``blendin_llm.observers``: reliability tracker, trace, log-probs). Guides that are not consulted
cost nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any, NamedTuple

import torch

from .backends.base import ModelBackend
from .config import BlendConfig, SamplingParams
from .filters import StopMatcher, StoppingCriteria
from .guides import CrossVocabGuide, SameVocabGuide
from .model_calls import Fetch, Forward, Steps, answer
from .observers import Choice, LogprobRecorder, StepObserver, StepOutput, TraceRecorder
from .reliability import ReliabilityTracker
from .results import BlendResult, StreamEvent, TokenLogprob, TopLogprob, Usage
from .sampling import SeedStream, apply_processors, build_processors, sample
from .strategies import ConsultPolicy, StepView, Strategy
from .text import IncrementalDetokenizer
from .tools import ToolCallCapture, parse_tool_calls
from .uncertainty import NEGENTROPY_K
from .vocab import IncrementalTokenizer, VocabMap, common_prefix

_EPS = 1e-20


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
            SameVocabGuide(g, ids) if vm is None else CrossVocabGuide(g, ids, vm)
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
        self.stopping = StoppingCriteria(
            frozenset() if no_eos else base.eos_token_ids,
            frozenset().union(*(() if no_eos else g.eos for g in self.guides)),
            stops if stops is not None else StopMatcher(params.stop),
        )
        self.generated: list[int] = []
        self.guide_tokens = 0
        self.detok = IncrementalDetokenizer(base.tokenizer)
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
        # the observers of each step's output (see blendin_llm.observers)
        self.logprobs = LogprobRecorder() if self.top_logprobs is not None else None
        self.observers: list[StepObserver] = [self.tracker]
        if self.tracker.trace is not None:
            self.observers.append(TraceRecorder(self.tracker.trace))
        if self.logprobs is not None:
            self.observers.append(self.logprobs)
        # the answer so far: the text released, where each token's text starts in the decoded
        # text, and how it ended (finish reason, stop sequence, where a stop string starts)
        self.text_parts: list[str] = []
        self.starts: list[int] = []
        self.lead = ""  # the prefix's released text, released with the first token
        self.finish_reason = "length"
        self.stop_sequence: str | None = None
        self.filter_ended = False  # a text filter ended the answer
        self.eos_end = False  # the answer's last token is an EOS
        self.answer_end: int | None = None
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

    def _choose(self) -> Steps[Choice]:
        """Choose the next token. The one place where the final log-distribution exists: the
        base's log-probs, or the strategy's blend when the guides were consulted, then the
        penalties (``self.processors``); the token is its argmax, or a draw with this step's
        uniform (``SeedStream``)."""
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
                c = Choice(
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
                c = Choice(
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
    ) -> Steps[Choice]:
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
        cols = tuple(stats[4 + i * n : 4 + (i + 1) * n] for i in range(5))
        return Choice(
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
            guide_stats=cols,
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
        self.lead = self.stopping.push(self.prefix)[0] if self.prefix else ""
        yield from self._advance(None)
        for index in range(self.budget):
            c = yield from self._choose()
            out = self._commit(index, c)
            for observer in self.observers:
                observer.observe(out)
            if out.released is not None:
                yield StreamEvent(
                    text=out.released,
                    token_id=c.token,
                    index=index,
                    consulted=c.consulted,
                    alpha=c.alpha,
                    prob=c.prob,
                    logprob=c.logprob,
                )
            if out.last:
                break
            if index + 1 < self.budget:
                self.healing = self.healing or c.steered
                yield from self._advance(c.token, bool(out.text))
        tail = self._close()
        yield StreamEvent(text=tail, done=True, result=self._result(time.perf_counter() - t0))

    def _commit(self, index: int, c: Choice) -> StepOutput:
        """The chosen token joins the answer: its text is decoded and passes the text filter; the
        stopping criteria say whether the answer ends here."""
        self.generated.append(c.token)
        self.starts.append(len(self.answer_text))
        if self.stopping.at_eos(c.token, c.consulted):
            self.finish_reason, self.eos_end = "stop", True
            self.stop_sequence = self.base.tokenizer.convert_ids_to_tokens(c.token)
            return StepOutput(index, c, "", None, last=True)
        delta = self.detok.push(c.token)
        self.answer_text += delta
        emit, hit = self.stopping.push(delta)
        released = None
        if emit or hit is None:
            released, self.lead = self.lead + emit, ""
            self.text_parts.append(released)
        if hit is not None:  # a stop string ("" when a filter ended the answer)
            self._stopped_at(hit, len(self.answer_text))
        return StepOutput(index, c, delta, released, last=hit is not None)

    def _stopped_at(self, hit: str, text_end: int) -> None:
        """A text filter ended the answer, with the stop string ``hit`` ("" when the filter
        itself ended it) found in the decoded text up to ``text_end``."""
        self.finish_reason, self.stop_sequence = "stop", hit or self.stop_sequence
        self.filter_ended = True
        if hit:  # the answer ends where the stop string starts
            self.answer_end = self.stopping.stop_start(hit, text_end)

    def _close(self) -> str:
        """The answer ended: the text still held back (an incomplete character, a possible stop
        string's start), released now unless a filter ended the answer."""
        tail = self.lead
        if self.filter_ended:
            self.text_parts.append(tail)
            return tail
        flushed = self.detok.flush()
        trace = self.tracker.trace
        if trace and flushed:  # held back as an incomplete character until the end
            trace[-1].text += flushed
        emit, hit = self.stopping.push(flushed)
        tail += emit
        if hit is not None:
            self._stopped_at(hit, len(self.answer_text) + len(flushed))
        else:
            tail += self.stopping.flush()
        self.text_parts.append(tail)
        return tail

    def _result(self, elapsed_s: float) -> BlendResult:
        """The answer's result. Only the answer counts: tokens whose text starts where a stop
        string starts (or later) were decoded to recognise it, and are neither counted nor
        scored."""
        end = self.answer_end
        n = len(self.generated) if end is None else sum(1 for s in self.starts if s < end)
        logprobs = None if self.logprobs is None else self.logprobs.items[:n]
        prompt_n = len(self.base_prompt)
        finish = self.finish_reason
        result = BlendResult(
            text="".join(self.text_parts),
            finish_reason=finish,
            stop_sequence=self.stop_sequence,
            token_ids=list(self.generated),
            usage=Usage(
                prompt_tokens=prompt_n,
                completion_tokens=n,
                total_tokens=prompt_n + n,
                guide_tokens_computed=self.guide_tokens,
            ),
            reliability=self.tracker.finish(
                capped=self.consult.capped,
                intervention_cap=self.consult.cap,
                answer_tokens=n,
                stopped=finish == "stop",
                eos=self.eos_end,
                top_k_approximation=self.approx_k,
            ),
            model=self.model_name,
            elapsed_s=elapsed_s,
            logprobs=logprobs,
        )
        if self.tool_capture is not None and self.tool_capture.captured:
            result.tool_calls, result.invalid_tool_calls = parse_tool_calls(
                self.tool_capture.captured, self.tools, finished=finish != "length"
            )
            if result.tool_calls:
                result.finish_reason = "tool_calls"
        return result
