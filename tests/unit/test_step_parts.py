"""The decoding step's parts after the choice, on hand-made steps: where the answer ends
(StoppingCriteria) and what the observers record (reliability tracker, trace, log-probs)."""

import math

from blendin_llm import BlendConfig
from blendin_llm.filters import StopMatcher, StoppingCriteria
from blendin_llm.observers import Choice, LogprobRecorder, StepOutput, TraceRecorder
from blendin_llm.reliability import ReliabilityTracker
from blendin_llm.results import TokenLogprob

TOP = [math.log(p) for p in [0.3, 0.25] + [0.45 / 13] * 13]


def _choice(token, consulted=False, **kw):
    return Choice(token, 0.3, 0.3, 0.3, consulted, TOP, math.log(0.3), **kw)


def _out(step, c, text="x", released="x", last=False):
    return StepOutput(step, c, text, released, last)


def test_a_guide_eos_ends_the_answer_only_where_the_guides_were_consulted():
    stop = StoppingCriteria(frozenset({0}), frozenset({1}), StopMatcher([]))
    assert stop.at_eos(0, consulted=False) and stop.at_eos(0, consulted=True)
    assert stop.at_eos(1, consulted=True)
    assert not stop.at_eos(1, consulted=False)  # the base chose it alone: a plain token
    assert not stop.at_eos(2, consulted=True)


def test_stopping_criteria_pass_text_through_the_answer_filter():
    stop = StoppingCriteria(frozenset(), frozenset(), StopMatcher(["END"]))
    assert stop.push("abc E") == ("abc ", None)  # "E" may start the stop string: held
    assert stop.push("ND tail") == ("", "END")


def test_the_tracker_observes_consulted_and_plain_steps():
    t = ReliabilityTracker(BlendConfig(gamma=0.4), "blendin", ["g"], gated=True, trace=False)
    stats = ([0.5], [0.9], [1.0], [1.0], [0.25])
    t.observe(_out(0, _choice(5)))
    t.observe(_out(1, _choice(6, consulted=True, alpha=0.5, guide_stats=stats)))
    assert len(t.steps) == 2
    assert t.guide_rows == [None, stats]
    rel = t.finish()
    assert rel.interventions == 1 and rel.mean_alpha == 0.5 and rel.mean_divergence == 0.25


def test_the_trace_has_one_entry_per_step_and_says_where_each_token_came_from():
    entries = []
    rec = TraceRecorder(entries)
    rec.observe(_out(0, _choice(5), text="a"))
    rec.observe(_out(1, _choice(6, consulted=True, alpha=0.7), text="", released=None))
    assert [(e.index, e.token_id, e.text, e.source, e.alpha) for e in entries] == [
        (0, 5, "a", "base", None),
        (1, 6, "", "blend", 0.7),
    ]


def test_log_probs_are_kept_for_the_steps_that_released_text():
    def lp(i):
        return TokenLogprob(token=str(i), bytes=[], logprob=-1.0, id=i, top_logprobs=[])

    rec = LogprobRecorder()
    rec.observe(_out(0, _choice(5, logprob=lp(5))))
    rec.observe(_out(1, _choice(6, logprob=lp(6)), released=""))  # held back: still a token
    rec.observe(_out(2, _choice(0, logprob=lp(0)), text="", released=None, last=True))  # EOS
    assert [x.id for x in rec.items] == [5, 6]


def test_a_caller_gets_the_models_before_the_decoding_thread_takes_another_step():
    """The decoding thread takes the models' lock again right after each step; a caller that waits
    for it (a new request's prompt encoding) must still get it at the next step boundary (a plain
    lock lets the decoding thread win again and again: one extra step or more per caller)."""
    import threading
    import time

    from blendin_llm.scheduler import TurnLock

    lock, stop, steps = TurnLock(), threading.Event(), [0]

    def decode():
        while not stop.is_set():
            with lock:
                steps[0] += 1
                time.sleep(0.001)  # the step's model work (the GIL is free meanwhile)

    thread = threading.Thread(target=decode)
    thread.start()
    extra = []
    try:
        for _ in range(20):
            time.sleep(0.003)
            before = steps[0]
            assert lock.acquire(timeout=5)
            extra.append(steps[0] - before)  # steps the decoding thread began while we waited
            lock.release()
    finally:
        stop.set()
        thread.join()
    assert sum(extra) <= 5, extra  # a plain lock: about 20 (one per caller); a little slack for a
    # caller that a loaded machine does not schedule within the 50 ms the decoding thread waits
