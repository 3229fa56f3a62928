"""Stop strings over streamed text pieces (blendin_llm.filters.StopMatcher): a stop split across
pieces is never emitted, not even in part."""

from blendin_llm.filters import StopMatcher


def _feed(matcher, pieces):
    out, hit = [], None
    for p in pieces:
        emitted, hit = matcher.push(p)
        out.append(emitted)
        if hit:
            break
    return out, hit


def test_stop_split_across_pieces_is_never_emitted():
    out, hit = _feed(StopMatcher(["END"]), ["Hello E", "N", "D and more"])
    assert hit == "END"
    assert out == ["Hello ", "", ""]
    assert "".join(out) == "Hello "


def test_false_start_is_released_once_it_cannot_match():
    m = StopMatcher(["END"])
    assert m.push("x EN") == ("x ", None)
    assert m.push("O") == ("ENO", None)
    assert m.flush() == ""
    m.push("tail E")
    assert m.flush() == "E"


def test_earliest_of_several_stops_wins():
    out, hit = _feed(StopMatcher(["world", "lo w"]), ["hello world"])
    assert hit == "lo w" and out == ["hel"]
