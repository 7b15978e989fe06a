import numpy as np
import pytest
from conftest import raises_as_cli

from charrnn.data import Batches, iter_text, load_ids, scan_vocab, split_train_val
from charrnn.errors import CharrnnError
from charrnn.vocab import Vocab


def test_scan_and_load_across_chunks(tmp_path, monkeypatch):
    import charrnn.data as data

    text = "ünïcödé text 漢字 " * 50
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "CHUNK_BYTES", 7)  # multi-byte characters split across chunks
    assert "".join(iter_text(path, 7)) == text
    vocab = scan_vocab([path])
    assert vocab.chars == sorted(set(text))
    ids = load_ids(path, vocab)
    assert vocab.decode(ids) == text


def test_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert "".join(iter_text(path)) == "hello"


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"ok\xff\xfe", "not UTF-8"),
                                             (b"a\x00b", "binary")])
def test_bad_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CharrnnError, match=message):
        list(iter_text(path))


def test_split_takes_the_last_fraction_for_validation():
    ids = np.arange(100)
    train, val = split_train_val(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert split_train_val(ids, 0.0)[1].size == 0


def test_batches_are_contiguous_streams():
    ids = np.arange(2 * 3 * 4 + 5)  # B=2 streams, T=3, enough for 4 batches
    batches = Batches(ids, batch_size=2, seq_len=3)
    per_stream = (len(ids) - 1) // 2
    assert batches.steps_per_epoch == per_stream // 3
    x0, y0 = batches.batch(0)
    x1, _ = batches.batch(1)
    assert x0.shape == (3, 2)
    assert x0[:, 0].tolist() == [0, 1, 2] and x1[:, 0].tolist() == [3, 4, 5]
    assert x0[:, 1].tolist() == [per_stream, per_stream + 1, per_stream + 2]
    np.testing.assert_array_equal(y0, x0 + 1)


def test_too_short_text_says_what_would_fit():
    with raises_as_cli(r"has 220 characters, too short.*needs 2501.*"
                                           r"--batch-size 4 \(with --seq-len 50\) or --seq-len 4 \(with --batch-size 50\)"):
        Batches(np.arange(220), batch_size=50, seq_len=50)
    with raises_as_cli(r"--batch-size 1 --seq-len 29 would fit"):
        Batches(np.arange(30), batch_size=50, seq_len=50)


def test_vocab_from_several_files(tmp_path):
    (tmp_path / "a.txt").write_text("abc")
    (tmp_path / "b.txt").write_text("cde")
    assert scan_vocab([tmp_path / "a.txt", tmp_path / "b.txt"]) == Vocab(list("abcde"))


def test_every_unknown_character_of_a_file_is_named_not_only_the_first_chunks(tmp_path, monkeypatch):
    import charrnn.data as data
    from charrnn.vocab import UnknownCharactersError

    path = tmp_path / "c.txt"
    path.write_text("abc" * 20 + "é" + "abc" * 20 + "ß", encoding="utf-8")
    monkeypatch.setattr(data, "CHUNK_BYTES", 8)
    with pytest.raises(UnknownCharactersError, match=r"c.txt: .*'ß' \(U\+00DF\), 'é' \(U\+00E9\)") as e:
        load_ids(path, Vocab.from_chars("abc"))
    assert e.value.chars == ["ß", "é"]


def test_load_known_ids_drops_and_counts_unknown_characters(tmp_path):
    from charrnn.data import load_known_ids

    path = tmp_path / "c.txt"
    path.write_text("abéc éa☕", encoding="utf-8")
    vocab = Vocab.from_chars("abc ")
    ids, skipped = load_known_ids(path, vocab)
    assert vocab.decode(ids) == "abc a"
    assert skipped == {"é": 2, "☕": 1}
