import pytest

from kseq.text import Vocabulary, standardize

pytestmark = pytest.mark.portable


def test_standardize_keeps_non_ascii_letters_and_inner_apostrophes():
    assert standardize("Un café naïve, São Paulo — Zürich straße, don't!") == [
        "un", "café", "naïve", "são", "paulo", "zürich", "straße", "don't",
    ]


def test_vocabulary_learns_whole_non_ascii_words():
    vocab = Vocabulary.fit(["über alles"])
    assert vocab.decode(vocab.encode("über alles")) == "über alles"
