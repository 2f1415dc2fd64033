"""Text normalisation and corpus-level WER, checked on hand-countable examples."""

import json
from pathlib import Path

import pytest

from distil_whisper_jax.speech import wer as evaluate
from distil_whisper_jax.speech.wer import basic_normalizer, english_normalizer, normalizer_for, wer, wer_details

ASSETS = Path(evaluate.__file__).parents[1] / "assets"  # the package's assets/, beside speech/


def test_spelling_map_is_bundled_with_notice():
    mapping = json.loads((ASSETS / "english_spelling.json").read_text(encoding="utf-8"))
    assert len(mapping) == 1739 and mapping["colour"] == "color" and mapping["theatre"] == "theater"
    assert "english_spelling.json" in (ASSETS / "NOTICE").read_text(encoding="utf-8")
    assert english_normalizer() is english_normalizer()  # cached


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith's 10 colours", "mister smith is 10 colors"),
        ("mister smith's ten colors", "mister smith is 10 colors"),
        ("Hello, World!", "hello world"),
        ("Uh, I mean [inaudible] (laughs) the theatre", "i mean the theater"),
        ("It is twenty-five past 3 pm", "it is 25 past 3 pm"),
        ("I'm gonna go, won't you?", "i am going to go will not you"),
    ],
)
def test_english_normalizer_outputs(text, expected):
    assert english_normalizer()(text) == expected


def test_basic_normalizer_and_language_choice():
    assert basic_normalizer()("Ça va? Très BIEN! [music]") == "ça va très bien "
    assert basic_normalizer(remove_diacritics=True)("Ça va") == "ca va"
    assert normalizer_for("fr") is basic_normalizer()
    for lang in ("en", "English", None):
        assert normalizer_for(lang) is english_normalizer()


def test_normalised_equivalents_score_zero():
    assert wer(["Mr. Smith's 10 colours"], ["mister smith's ten colors"]) == 0.0
    # without normalisation: "Mr." "Smith's" "10" "colours" vs 4 different words -> 4 substitutions
    assert wer(["Mr. Smith's 10 colours"], ["mister smith's ten colors"], normalize=False) == 100.0


def test_hand_counted_errors():
    assert wer(["the cat sat down"], ["the cat sit down"]) == 25.0  # 1 substitution / 4 words
    assert wer(["the cat sat down"], ["the cat down"]) == 25.0  # 1 deletion
    assert wer(["the cat sat down"], ["the big cat sat down now"]) == 50.0  # 2 insertions
    assert wer(["a b c d"], [""]) == 100.0  # empty prediction: 4 deletions
    d = wer_details(["the cat sat down", "hello world"], ["a cat sat", "hello there world"])
    # pair 1: the->a (S), down deleted (D); pair 2: "there" inserted (I); 6 reference words in all
    assert (d.substitutions, d.deletions, d.insertions, d.hits) == (1, 1, 1, 4)
    assert d.reference_words == 6 and d.num_pairs == 2 and d.dropped == 0
    assert d.wer == pytest.approx(50.0)


def test_corpus_level_not_averaged():
    # 1 error in 1 word + 0 errors in 9 words = 10 %, not the 50 % a per-utterance mean would give
    refs = ["yes", "one two three four five six seven eight nine"]
    hyps = ["no", "one two three four five six seven eight nine"]
    assert wer(refs, hyps, normalize=False) == pytest.approx(10.0)


def test_empty_references_dropped():
    # "[noise]" and "uh" normalise to nothing: those pairs are not scored, whatever was predicted
    refs = ["[noise]", "the cat sat down", "uh", "  "]
    hyps = ["something", "the cat sit down", "words", "more words"]
    d = wer_details(refs, hyps)
    assert d.wer == 25.0 and d.num_pairs == 1 and d.dropped == 3
    assert wer(["", "a b"], ["x", "a b"], normalize=False) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="all 2 references are empty"):
        wer(["[music]", "hmm"], ["la la", "mm"])
    with pytest.raises(ValueError, match="no references"):
        wer([], [])
    with pytest.raises(ValueError, match="single strings"):
        wer("the cat", "the cat")
