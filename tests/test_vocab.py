import numpy as np
import pytest

from charrnn.errors import CharrnnError
from charrnn.vocab import Vocab


def test_from_chars_sorts_by_code_point_and_round_trips_text():
    v = Vocab.from_chars("hello, wörld ✓")
    assert v.chars == sorted(set("hello, wörld ✓"))
    ids = v.encode("wörld ✓")
    assert v.decode(ids) == "wörld ✓"
    assert ids.dtype == np.uint8


def test_json_round_trip(tmp_path):
    v = Vocab.from_chars("ab\n\t\"\\é漢字🙂\x7f")
    path = tmp_path / "vocab.json"
    v.save(path)
    assert Vocab.load(path) == v
    assert Vocab.from_json(v.to_json()) == v


def test_large_vocabulary_uses_wider_ids():
    chars = [chr(0x4E00 + i) for i in range(3000)]  # 3000 CJK characters
    v = Vocab(chars)
    assert v.id_dtype == np.uint16
    text = "".join(chars[::7])
    assert v.decode(v.encode(text)) == text


def test_unknown_characters_are_named():
    v = Vocab.from_chars("abc")
    with pytest.raises(CharrnnError, match=r"'é' \(U\+00E9\)"):
        v.encode("abé")


@pytest.mark.parametrize("text", ["", "[]", '{"format": "other"}', '{"format": "charrnn-vocab", "version": 1}',
                                  '{"format": "charrnn-vocab", "version": 1, "chars": ["ab"]}',
                                  '{"format": "charrnn-vocab", "version": 1, "chars": ["a", "a"]}',
                                  '{"format": "charrnn-vocab", "version": 9, "chars": ["a"]}'])
def test_bad_json_is_refused(text):
    with pytest.raises(CharrnnError):
        Vocab.from_json(text)


def test_lone_surrogates_are_not_characters():
    # JSON can spell one ("\ud800"); UTF-8 text never holds one, and it could not be saved.
    with pytest.raises(CharrnnError, match="lone surrogate"):
        Vocab.from_json('{"format": "charrnn-vocab", "version": 1, "chars": ["a", "\\ud800"]}')


def test_absurdly_long_numbers_are_refused_as_bad_json():
    with pytest.raises(CharrnnError, match="invalid JSON"):
        Vocab.from_json('{"format": "charrnn-vocab", "version": ' + "9" * 5000 + "}")


def test_unknown_characters_error_carries_them():
    from charrnn.vocab import UnknownCharactersError

    with pytest.raises(UnknownCharactersError) as e:
        Vocab.from_chars("abc").encode("abzyz")
    assert e.value.chars == ["y", "z"]
