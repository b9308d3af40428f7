"""TextStream: whole UTF-8 characters out, stop strings matched across token boundaries."""

from nanocommander.engine.text.stream import TextStream


def feed(stream, pieces):
    out = []
    for p in pieces:
        text, stopped = stream.push(p)
        out.append(text)
        if stopped:
            return out, True
    out.append(stream.flush())
    return out, False


def test_multibyte_character_is_held_until_complete():
    data = "日🙂".encode()
    out, _ = feed(TextStream(), [bytes([b]) for b in data])
    assert "".join(out) == "日🙂"
    assert all(piece in ("", "日", "🙂") for piece in out)


def test_stop_spanning_pieces_is_cut_and_not_emitted():
    out, stopped = feed(TextStream(("END",)), [b"hello E", b"N", b"D and more"])
    assert stopped and "".join(out) == "hello "


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    out, stopped = feed(TextStream(("ENDING",)), [b"an EN", b"D", b" here"])
    assert not stopped and "".join(out) == "an END here"


def test_trim_stop_off_keeps_the_stop_text():
    out, stopped = feed(TextStream(("</s>",), trim_stop=False), [b"ok</", b"s>tail"])
    assert stopped and "".join(out) == "ok</s>"


def test_earliest_of_several_stops_wins():
    out, _ = feed(TextStream(("b", "a")), [b"xxab"])
    assert "".join(out) == "xx"


def test_incomplete_trailing_character_is_dropped_not_garbled():
    out, _ = feed(TextStream(), [b"ok ", "é".encode()[:1]])
    assert "".join(out) == "ok "
