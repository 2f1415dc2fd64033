"""``--long_form vad``: Silero VAD on onnxruntime (``speech/vad.py``), the piece plan and the batched decoding of
the pieces (``decode/vad_pieces.py``), with the real tiny.en on real speech: the bundled LibriVox sentences joined
with real pauses of 0.5-2 s, forwards then backwards (60.7 s). Every decoding run here uses one device, batch 2,
fp32 and a timestamp prompt, so they share two compiled programs (batches of 2 and 1 rows)."""

from __future__ import annotations

import io
import json
import logging
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt

from distil_whisper_jax.assets import librivox_recordings
from distil_whisper_jax.cli import transcribe as cli
from distil_whisper_jax.decode import decoding, sequential, vad_pieces
from distil_whisper_jax.decode import transcribe as tr
from distil_whisper_jax.speech import audio, subtitles, vad
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.stages.evaluate import evaluation
from distil_whisper_jax.stages.label import units
from distil_whisper_jax.stages.label.config import PseudoLabelConfig

from .helpers import write_tsv

ONE = jax.local_devices()[:1]
GAPS = (0.5, 1.0, 2.0, 0.6, 1.5)  # seconds of silence after each sentence, in turn
SR = audio.SAMPLE_RATE


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """(path, samples, reference, [(start, end) of each sentence in samples]) of the joined recording."""
    recs = librivox_recordings()
    parts, clips, pos = [], [], 0
    for k, (p, _) in enumerate(recs + recs[::-1]):
        wav = audio.load_audio(p)
        clips.append((pos, pos + len(wav)))
        parts += [wav, np.zeros(int(GAPS[k % 5] * SR), np.float32)]
        pos += len(wav) + int(GAPS[k % 5] * SR)
    wav = np.concatenate(parts)
    path = tmp_path_factory.mktemp("vad") / "talk.wav"
    sf.write(path, wav, SR)
    return path, wav, " ".join(t for _, t in recs + recs[::-1]), clips


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """40 s of digital silence, 40 s of white noise, 40 s of brown (random-walk) noise."""
    d, rng = tmp_path_factory.mktemp("odd"), np.random.default_rng(0)
    brown = np.cumsum(rng.standard_normal(40 * SR))
    signals = {
        "silence": np.zeros(40 * SR),
        "white": 0.1 * rng.standard_normal(40 * SR),
        "brown": 0.3 * (brown - brown.mean()) / np.abs(brown - brown.mean()).max(),
    }
    for name, x in signals.items():
        sf.write(d / f"{name}.wav", x.astype(np.float32), SR)
    return [d / f"{name}.wav" for name in signals]


@pytest.fixture(scope="module")
def vad_run(tiny, talk, odd):
    """The recording, one sentence alone and the odd files, transcribed together in vad mode."""
    files = [talk[0], librivox_recordings()[1][0], *odd]
    return files, tr.transcribe(files, tiny, batch_size=2, long_form="vad", devices=ONE, progress=False)


def test_speech_spans_find_the_pauses(talk):
    _, wav, _, clips = talk
    probs = vad.SileroVad().probabilities(wav)
    assert len(probs) == -(-len(wav) // vad.FRAME)
    blocks = [wav[i : i + 7777] for i in range(0, len(wav), 7777)]  # blocks that do not align with the frames
    assert np.array_equal(vad.SileroVad().probabilities(blocks), probs)
    spans = [(s * vad.FRAME, e * vad.FRAME) for s, e in vad.speech_spans(probs)]
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    pauses = [(e, s) for (_, e), (s, _) in zip(clips, clips[1:])]
    for a, b in pauses:  # no stretch of speech runs through the middle of a pause
        assert not any(s < (a + b) // 2 < e for s, e in spans), (a / SR, b / SR)
    for a, b in clips:  # every sentence is found: most of it (the files have quiet edges) is speech
        covered = sum(max(0, min(e, b) - max(s, a)) for s, e in spans)
        assert covered > 0.7 * (b - a) and any(s <= (a + b) // 2 < e for s, e in spans), (a / SR, b / SR)


@pytest.mark.parametrize("window_s", [30, 15, 8])
def test_pieces_end_at_pauses_and_fit_the_window(talk, window_s):
    _, wav, _, clips = talk
    probs = vad_pieces.default_vad().probabilities(wav)
    plan = vad_pieces.plan_probabilities(probs, window_s * SR)
    pieces = [vad_pieces.samples_of(p, len(wav)) for p in plan.pieces]
    assert plan.split == [] and len(pieces) >= 60 / window_s
    assert all(0 <= s < e <= len(wav) and e - s <= window_s * SR for s, e in pieces)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(pieces, pieces[1:]))
    low = vad.VadOptions().low
    for (_, e), (s, _) in zip(pieces, pieces[1:]):  # each cut is in a pause the VAD heard (≥ 0.16 s below low)
        frames = probs[(e - int(vad_pieces.PAD_S * SR)) // vad.FRAME : (s + int(vad_pieces.PAD_S * SR)) // vad.FRAME]
        assert np.sum(frames < low) >= 5, (e / SR, s / SR)
    if window_s == 30:  # then every sentence lies whole inside one piece (smaller windows also cut in sentences)
        for a, b in clips:
            assert any(s <= a + 0.3 * SR and b - 0.3 * SR <= e for s, e in pieces), (a / SR, b / SR)


def _random_case(rng):
    n = int(rng.integers(50, 3000))
    probs = rng.uniform(0, 0.3, n).astype(np.float32)
    pos = int(rng.integers(0, 40))
    while pos < n:
        length = int(rng.choice([rng.integers(1, 60), rng.integers(200, 1200)]))
        probs[pos : pos + length] = rng.uniform(0.6, 1.0, len(probs[pos : pos + length]))
        pos += length + int(rng.integers(1, 80))
    return probs


@pytest.mark.parametrize("keep_silence", [False, True])
def test_plan_cuts_inside_speech_only_when_it_is_longer_than_the_window(keep_silence):
    rng = np.random.default_rng(1)
    for _ in range(200):
        probs = _random_case(rng)
        window, pad = int(rng.integers(20, 940)), int(rng.integers(0, 14))
        spans = vad.speech_spans(probs)
        plan = vad_pieces.plan(spans, probs, window, pad, keep_silence)
        speech = vad_pieces.padded(spans, len(probs), pad)
        assert all(0 <= s < e <= len(probs) and e - s <= window for s, e in plan.pieces)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(plan.pieces, plan.pieces[1:]))
        cuts = {e for _, e in plan.pieces[:-1]} | {s for s, _ in plan.pieces[1:]}
        inside = {c for c in cuts for s, e in speech if s < c < e}
        assert inside == set(plan.split)  # every cut inside speech is reported ...
        for c in plan.split:  # ... and falls in a stretch longer than the window
            assert any(s < c < e and e - s > window for s, e in speech)
        if keep_silence:  # the pieces cover the recording; silence is cut only where a window must end
            assert plan.pieces[0][0] == 0 and plan.pieces[-1][1] == len(probs)
            assert all(e1 == s2 for (_, e1), (s2, _) in zip(plan.pieces, plan.pieces[1:]))
            silent = [not any(s < b and e > a for s, e in speech) for a, b in plan.pieces]
            for (a, b), x, y in zip(plan.pieces, silent, silent[1:]):
                assert not (x and y) or b - a == window, (a, b, window, plan.pieces)
        else:  # every frame of padded speech is in a piece, and no piece starts or ends in silence
            held = sum(min(e, b) - max(s, a) for s, e in speech for a, b in plan.pieces if min(e, b) > max(s, a))
            assert held == sum(e - s for s, e in speech)
            for a, b in plan.pieces:
                assert any(s <= a < e for s, e in speech) and any(s < b <= e for s, e in speech)


class _SpeechEverywhere:
    """A stand-in VAD that hears speech in every frame."""

    def probabilities(self, wav):
        return np.full(-(-len(wav) // vad.FRAME), 0.95, np.float32)


def test_speech_longer_than_the_window_is_cut_and_reported(caplog):
    heard: list[int] = []

    def decoder(waves):
        heard.extend(len(w) for w in waves)
        return [[] for _ in waves]

    with caplog.at_level(logging.WARNING, logger=vad_pieces.__name__):
        [r] = vad_pieces.transcribe_files(
            ["speech.wav"], lambda i: np.zeros(70 * SR, np.float32), decoder, 2, 30 * SR, 50363, 50256,
            lambda ids: "", model=_SpeechEverywhere(),
        )  # fmt: skip
    assert len(r["vad"]["split_speech"]) == 2 and r["vad"]["pieces"] == 3
    assert all(15 <= c <= 60 for c in r["vad"]["split_speech"])
    assert max(heard) <= 30 * SR and sum(heard) == 70 * SR
    assert sum("speech.wav: speech without a pause" in m for m in caplog.messages) == 2


def test_silence_and_noise_reach_no_decoder_and_give_no_text(odd, vad_run):
    def never(waves):
        raise AssertionError("nothing should be decoded")

    load = lambda i: audio.load_audio(odd[i])
    for r in vad_pieces.transcribe_files(
        [str(p) for p in odd], load, never, 2, 30 * SR, 50363, 50256, lambda ids: "".join(map(str, ids))
    ):
        assert (r["text"], r["segments"], r["vad"]["pieces"]) == ("", [], 0)
    for r in vad_run[1][2:]:
        assert (r["text"], r["segments"]) == ("", [])


def test_segments_are_monotonic_inside_the_audio_and_the_text_is_right(talk, vad_run):
    r = vad_run[1][0]
    assert r["vad"]["pieces"] == 2 and r["vad"]["split_speech"] == []
    prev = 0.0
    for s in r["segments"]:
        assert prev <= s["start"] <= s["end"] <= len(talk[1]) / SR
        prev = s["end"]
    assert "".join(s["text"] for s in r["segments"]).split() == r["text"].split()
    assert wer([talk[2]], [r["text"]]) < 6  # 2.8 % when written


def test_batched_equals_one_file_at_a_time(tiny, vad_run):
    files, together = vad_run
    for f, r in zip(files[:2], together):
        [alone] = tr.transcribe([f], tiny, batch_size=2, long_form="vad", devices=ONE, progress=False)
        assert alone == r


def test_short_batches_run_as_fewer_rows(tiny, talk, monkeypatch):
    """A batch of n pieces runs as the next of 1, 2, 4, … rows (times the devices) up to the batch size, not
    always as a full batch: a 30 s window costs the same encoder pass whether it holds speech or filler."""
    assert [decoding.padded_rows(n, 8) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
    assert [decoding.padded_rows(n, 24, 8) for n in (1, 8, 9, 17, 24)] == [8, 8, 16, 24, 24]
    rows = []
    real = decoding.generate
    monkeypatch.setattr(decoding, "generate", lambda params, mel, *a: rows.append(len(mel)) or real(params, mel, *a))
    dec = decoding.decoder(tiny, 8, timestamps=True, devices=ONE)
    piece = talk[1][: 10 * SR]
    one, three = dec([piece]), dec([piece] * 3)
    assert rows == [1, 4] and three == one * 3  # the filler row changes nothing in the rows decoded


def test_transcribe_writes_srt_vtt_and_json(talk, vad_run, tmp_path):
    files, results = vad_run
    assert tr.write_outputs(results[:1], tr.output_stems(files[:1], tmp_path)) == []
    r = results[0]
    assert json.loads((tmp_path / "talk.json").read_text()) == r
    subs = list(srt.parse((tmp_path / "talk.srt").read_text()))
    captions = webvtt.from_buffer(io.StringIO((tmp_path / "talk.vtt").read_text()))
    timed = [s for s in r["segments"] if s["text"].strip()]
    assert len(subs) == len(captions) == len(timed) > 5
    for sub, seg in zip(subs, timed):
        assert sub.content == seg["text"].strip()
        assert sub.start.total_seconds() == pytest.approx(seg["start"], abs=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"talk.{e}" for e in subtitles.WRITERS)


def test_run_eval_scores_a_long_row(talk, tmp_path):
    manifest = write_tsv(tmp_path / "long.tsv", [{"audio": str(talk[0]), "text": talk[2]}])
    cfg = evaluation.EvalConfig(
        dataset_name=str(manifest), output_dir=str(tmp_path / "ev"), long_form="vad",
        per_device_eval_batch_size=2, num_local_devices=1,
    )  # fmt: skip
    assert evaluation.run(cfg) == 0
    d = json.loads((tmp_path / "ev" / "results.json").read_text())["datasets"][str(manifest)]
    assert (d["num_samples"], d["scored"], d["too_long"]) == (1, 1, 0) and d["wer"] < 6


def test_labelling_cuts_long_clips_at_pauses(talk):
    _, wav, _, clips = talk
    x = units.quantize(wav)
    pieces = units.split_at_pauses(x, 10 * SR, "talk", 0)
    assert np.array_equal(np.concatenate(pieces), x) and all(len(p) <= 10 * SR for p in pieces)
    cuts = np.cumsum([len(p) for p in pieces])[:-1]
    assert not any(a < c < b for c in cuts for a, b in clips)


def test_missing_runtime_or_model_is_named_before_work(monkeypatch, talk, tmp_path, capsys):
    with pytest.raises(vad.VadUnavailableError, match="reinstall"):
        vad.check_available(tmp_path / "missing.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(vad.VadUnavailableError, match="needs onnxruntime.*pip install onnxruntime"):
        vad.SileroVad()
    assert cli.main([str(talk[0]), "--long_form", "vad"]) == 2
    assert "--long_form vad needs onnxruntime" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs onnxruntime"):
        evaluation.EvalConfig(dataset_name="x", output_dir=str(tmp_path), long_form="vad").validate()
    with pytest.raises(ValueError, match="needs onnxruntime"):
        PseudoLabelConfig(dataset_name="x", output_dir=str(tmp_path), long_audio="vad").validate()


def test_loops_are_units_repeated_many_times_in_a_row_not_repetitive_speech():
    eot, ts = 50256, 50363
    o = 440  # any text token
    assert vad_pieces.loops([ts, *[o] * 40], eot)  # "O O O O …" to the cap
    assert vad_pieces.loops([ts, 1, 2, 3, *[7, 8, 9] * 6, ts + 50], eot)  # a 3-token phrase six times
    assert vad_pieces.loops([ts, *[t for k in range(6) for t in (5, 6, 7, ts + k, ts + k)]], eot)  # stamps between
    assert not vad_pieces.loops([ts, *[7, 8] * 4, 9, ts + 100], eot)  # "no, no, no, no": 8 tokens
    assert not vad_pieces.loops([ts, *range(1, 60), ts + 100], eot)
    phrase = [11, 12, 13, 14]  # a prompt's refrain ("press the hash key") between other words: not in a row
    assert not vad_pieces.loops([ts, *[t for k in range(6) for t in (100 + k, 200 + k, *phrase)], ts + 99], eot)


def _said(w: np.ndarray, *tokens: int, until: float | None = None) -> list[int]:
    """A fake output: ``tokens`` in one segment from 0 s to ``until`` (default the piece's end)."""
    end = len(w) / SR if until is None else until
    return [50363, *tokens, 50363 + round(end / 0.02)]


def test_looping_pieces_go_to_the_fallback_and_its_output_is_kept():
    """Pieces whose greedy output loops are decoded again by the fallback, a batch at a time, and only those."""
    sent: list[int] = []

    def greedy(waves):  # the two ~30 s pieces loop, the 10 s one does not
        return [_said(w, 7, 7, 7, 7) if len(w) > 20 * SR else _said(w, 1, 2) for w in waves]

    def hotter(waves):
        sent.extend(len(w) for w in waves)
        return [_said(w, 3) for w in waves]

    fallback = vad_pieces.Fallback(lambda ids: ids.count(7) > 2, hotter)
    [r] = vad_pieces.transcribe_files(
        ["speech.wav"], lambda i: np.zeros(70 * SR, np.float32), greedy, 2, 30 * SR, 50363, 50256,
        lambda ids: " ".join(map(str, ids)), model=_SpeechEverywhere(), fallback=fallback,
    )  # fmt: skip
    assert len(sent) == 2 and min(sent) > 20 * SR and r["vad"]["decoded_again_hotter"] == 2
    assert r["text"] == "3 3 1 2" and r["vad"]["tails_decoded_again"] == 0


class _SpeechUntil:
    """A stand-in VAD that hears speech for the first 20 s, then silence."""

    def probabilities(self, wav):
        probs = np.full(-(-len(wav) // vad.FRAME), 0.02, np.float32)
        probs[: 20 * SR // vad.FRAME] = 0.95
        return probs


@pytest.mark.parametrize("closed_at, tail", [(10.0, True), (19.6, False)])
def test_speech_left_unsaid_after_a_closed_segment_is_decoded_again(closed_at, tail):
    """Whisper may close a segment and stop with speech still to come in its window: when the VAD heard at least
    UNSAID_MIN_S of speech after the last timestamp, that tail is decoded again (once); less is left alone."""
    heard: list[float] = []

    def decoder(waves):
        heard.extend(len(w) / SR for w in waves)
        return [_said(w, 1, until=closed_at) if len(heard) == 1 else _said(w, 2) for w in waves]

    [r] = vad_pieces.transcribe_files(
        ["speech.wav"], lambda i: np.zeros(25 * SR, np.float32), decoder, 2, 30 * SR, 50363, 50256,
        lambda ids: " ".join(map(str, ids)), model=_SpeechUntil(),
    )  # fmt: skip
    piece = 20 + vad_pieces.PAD_S
    assert heard[0] == pytest.approx(piece, abs=0.05)
    if tail:
        assert heard[1:] == [pytest.approx(piece - closed_at, abs=0.05)] and r["text"] == "1 2"
        assert [(s["start"], s["end"]) for s in r["segments"]] == [
            (0.0, closed_at),
            (closed_at, pytest.approx(piece, abs=0.05)),
        ]
    else:
        assert heard[1:] == [] and r["text"] == "1"
    assert r["vad"]["tails_decoded_again"] == int(tail)


def test_the_fallback_decodes_a_window_like_greedy_at_temperature_0(tiny, talk):
    """``sequential.window_fallback`` through the prompted program at temperature 0 gives ``generate``'s greedy
    ids for the same pieces (an independent program), and a hotter setting still transcribes them."""
    waves = [talk[1][s:e] for s, e in talk[3][:3]]
    greedy = decoding.decoder(tiny, 2, timestamps=True, devices=ONE)(waves)
    same = sequential.SequentialOptions(temperatures=(0.0, 0.0))
    assert sequential.window_fallback(tiny, batch_size=2, devices=ONE, options=same)(waves) == greedy
    assert sequential.window_fallback(tiny, batch_size=2, devices=ONE, options=sequential.SequentialOptions(
        temperatures=(0.0,))) is None  # fmt: skip
    always = sequential.SequentialOptions(temperatures=(0.0, 0.4), compression_ratio_threshold=0.0)
    hot = sequential.window_fallback(tiny, batch_size=2, devices=ONE, options=always)(waves)
    text = [tiny.tokenizer.decode(ids, skip_special_tokens=True) for ids in hot]
    refs = [t for _, t in librivox_recordings()[:3]]
    assert wer(refs, text) < 25, (refs, text)


def test_vad_with_every_piece_sent_to_a_temperature_0_fallback_equals_plain_vad(tiny, talk, vad_run, monkeypatch):
    """The whole path: every piece counted as looping, decoded again at temperature 0, gives the same result."""
    monkeypatch.setattr(vad_pieces, "loops", lambda ids, eot: True)
    forced = sequential.SequentialOptions(temperatures=(0.0, 0.0))
    [r] = tr.transcribe(
        [talk[0]], tiny, batch_size=2, long_form="vad", devices=ONE, progress=False, sequential_options=forced
    )
    plain = vad_run[1][0]
    assert r["vad"]["decoded_again_hotter"] == r["vad"]["pieces"] + r["vad"]["tails_decoded_again"] > 0
    assert plain["vad"]["decoded_again_hotter"] == 0
    assert (r["text"], r["segments"]) == (plain["text"], plain["segments"])
