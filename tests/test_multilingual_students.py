"""Multilingual labelling, training and evaluation with the real multilingual whisper-base on the bundled
French, German and Spanish speech: each row is prompted in its own language (a mixed batch labels a row as a
one-language batch does), the labelled output keeps the language, training sequences carry the row's
language token, eval reports WER per language, a student made from the teacher's layers detects the
language as the teacher does, and languages a model cannot take are refused before any work."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from distil_whisper_jax.assets import multilingual_speech_manifest
from distil_whisper_jax.data import sources as data
from distil_whisper_jax.data import stream as train_data
from distil_whisper_jax.decode.generate import detect_language, generate, generation_options, strip
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens
from distil_whisper_jax.speech.wer import normalizer_for, wer
from distil_whisper_jax.stages.demo.multilingual import Sizes, multilingual_commands
from distil_whisper_jax.stages.evaluate import evaluation
from distil_whisper_jax.stages.label import pseudo_label as pl
from distil_whisper_jax.stages.student.create_student import create_student
from distil_whisper_jax.weights.loading import load_pretrained

from .helpers import REPO, labelled_rows, read_tsv, subprocess_env, write_tsv

LANGS = ("fr", "de", "es")
PER_LANG = 3  # held-out clips per language labelled and evaluated (all 15 are used for language detection)


def heldout(lang: str, n: int | None = None) -> list[dict]:
    path = multilingual_speech_manifest(lang, "heldout")
    return [dict(r, audio=str(path.parent / r["audio"])) for r in read_tsv(path)[:n]]


def norm(lang: str, text: str) -> str:
    return normalizer_for(lang)(text)


# whisper-base's held-out WER on the bundled speech (assets/speech_multilingual/README.md, all 15 clips): French
# 69.86 % (it hears espeak-ng's French as other words), German 29.77 %, Spanish 27.61 %; per speaker it swings by
# tens of points, so on the first 3 clips the bounds leave that room and stay below what misaligned
# references/predictions give (> 90 %). Above 0: the base model does not get every word of a language right.
HELDOUT_MAX_WER = {"fr": 90.0, "de": 60.0, "es": 60.0}


def predictions_by_language(path: Path, rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """(reference, prediction) pairs of ``predictions.csv`` per language, the language taken from the manifest
    ``rows`` the run read (the file has none), checking that each reference is that row's."""
    out: dict[str, list[tuple[str, str]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    for r in written:
        row = rows[int(r["row"])]
        assert r["reference"] == row["text"] and not r["error"], r
        out.setdefault(row["language"], []).append((r["reference"], r["prediction"]))
    return out


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """One manifest per language without a language column (the language comes from --language)."""
    d = tmp_path_factory.mktemp("ml")
    columns = ("audio", "text", "speaker_id", "duration")
    return [write_tsv(d / f"{lang}.tsv", heldout(lang, PER_LANG), columns) for lang in LANGS]


@pytest.fixture(scope="module")
def labelled(base, manifests, multilingual_base_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled")
    cfg = pl.PseudoLabelConfig(
        dataset_name="+".join(map(str, manifests)),
        language="+".join(LANGS),
        model_name_or_path=str(multilingual_base_dir),
        output_dir=str(out),
        per_device_eval_batch_size=2,
        num_local_devices=2,
        max_label_length=64,
        rows_per_shard=100,
    )
    assert pl.run(cfg) == 0
    return out


def test_each_row_is_labelled_in_its_own_language(base, labelled):
    rows = labelled_rows(labelled)
    assert [r["language"] for r in rows] == [lang for lang in LANGS for _ in range(PER_LANG)]
    # the batches mixed languages (batch 4 over 9 rows); each row's label is what a batch of its own
    # language alone gives, so each row got its own <|lang|> token
    sp = special_tokens(base.tokenizer)
    opts = generation_options(base, sp, max_new_tokens=64)
    one = jax.local_devices()[:1]  # 8 devices equal 1 (test_generate); 8 replicas of whisper-base cost 2.4 GB here
    for lang in LANGS:
        clips = heldout(lang, PER_LANG)
        mel = audio.log_mel_spectrogram([audio.load_audio(r["audio"]) for r in clips], n_mels=80)
        ids = strip(generate(base.params, mel, prompt_ids(sp, language=lang), base.config, opts, devices=one), sp.eot)
        assert [r["whisper_token_ids"] for r in rows if r["language"] == lang] == ids
        # the right language token matters: prompted as English, the same clips come out much worse
        english = strip(
            generate(base.params, mel, prompt_ids(sp, language="en"), base.config, opts, devices=one), sp.eot
        )
        texts = [base.tokenizer.decode(t, skip_special_tokens=True) for t in english]
        as_english = wer([r["text"] for r in clips], texts, language=lang)
        labelled_wer = wer(
            [r["text"] for r in clips], [base.tokenizer.decode(t, skip_special_tokens=True) for t in ids], language=lang
        )
        assert labelled_wer < 80 and labelled_wer < as_english - 10, (lang, labelled_wer, as_english, texts)


def test_training_sequences_carry_the_row_language(base, labelled):
    sp = special_tokens(base.tokenizer)
    sources = train_data.open_sources(str(labelled))
    stream = train_data.TrainStream(sources, None, base.tokenizer, sp, train_data.DataOptions(), seed=0)
    groups = sources[0].row_groups()
    languages = [r for g in range(len(groups.sizes)) for r in groups.read(g, ["language"])]
    for _ in range(3 * PER_LANG):
        ex = stream.next_example()
        token = ex.sequence[ex.sequence.index(sp.sot) + 1]
        assert sp.language_codes[sp.language_ids.index(token)] == languages[ex.key[1]]["language"]


def test_eval_reports_wer_per_language_from_a_language_column(base, multilingual_base_dir, tmp_path):
    rows = [r for lang in LANGS for r in heldout(lang, PER_LANG)]
    mixed = write_tsv(tmp_path / "mixed.tsv", rows)
    out = tmp_path / "eval"
    cfg = evaluation.EvalConfig(
        dataset_name=str(mixed),
        language_column_name="language",
        model_name_or_path=str(multilingual_base_dir),
        output_dir=str(out),
        per_device_eval_batch_size=2,
        num_local_devices=2,
        max_new_tokens=64,
        predictions_csv=True,
    )
    assert evaluation.run(cfg) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["languages"]) == set(LANGS)
    written = predictions_by_language(out / "predictions.csv", rows)
    for lang in LANGS:
        st = res["languages"][lang]
        # the per-language figure is the corpus WER of that language's rows, each normalised for its language,
        # recomputed here from the predictions the run wrote
        refs, preds = zip(*written[lang])
        assert st["num_samples"] == PER_LANG and st["reference_words"] == sum(len(norm(lang, t).split()) for t in refs)
        assert st["wer"] == pytest.approx(wer(refs, preds, language=lang)), (lang, st, preds)
        assert 0 < st["wer"] < HELDOUT_MAX_WER[lang], (lang, st, preds)


# ~8 min on 2 cores (60 training steps of a base-sized student): over CI's budget, run with `-m slow`.
@pytest.mark.slow
def test_a_distilled_student_identifies_the_language_like_its_teacher(base, multilingual_base_dir, tmp_path):
    """A 2-layer student cut from whisper-base (first and last decoder layers) and distilled for 60 steps on
    the bundled French, German and Spanish training speech (one --language per dataset) identifies the
    language of the held-out clips: it agrees with the teacher wherever the teacher is right (espeak-ng
    French fools the teacher on some clips). Fresh from the cut it picks one wrong language for all."""
    from distil_whisper_jax.stages.distill.distill import DistillConfig, run

    student_dir = create_student(base, tmp_path / "student", decoder_layers=2)
    train = "+".join(str(multilingual_speech_manifest(lang, "train")) for lang in LANGS)
    cfg = DistillConfig(
        model_name_or_path=str(student_dir),
        teacher_model_name_or_path=str(multilingual_base_dir),
        train_dataset_name=train,
        language="+".join(LANGS),
        train_text_column_name="text",
        output_dir=str(tmp_path / "run"),
        max_steps=60,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        warmup_steps=5,
        freeze_encoder=True,
        cache_encoder_outputs=True,
        save_steps=60,
        max_label_length=64,
        disable_tqdm=True,
    )
    assert run(cfg) == 0
    sp = special_tokens(base.tokenizer)
    clips = [r for lang in LANGS for r in heldout(lang)]
    mel = audio.log_mel_spectrogram([audio.load_audio(r["audio"]) for r in clips], n_mels=80)
    truth = np.array([sp.language_codes.index(r["language"]) for r in clips])
    teacher = detect_language(base.params, mel, base.config, sp.sot, sp.language_ids).argmax(-1)
    fresh = load_pretrained(student_dir)
    before = detect_language(fresh.params, mel, fresh.config, sp.sot, sp.language_ids).argmax(-1)
    student = load_pretrained(tmp_path / "run" / "hf")
    after = detect_language(student.params, mel, student.config, sp.sot, sp.language_ids).argmax(-1)
    right = teacher == truth
    print(
        f"language ID on {len(clips)} held-out clips: teacher {right.mean():.2f}, fresh student "
        f"{(before == truth).mean():.2f}, distilled student {(after == truth).mean():.2f}; the student agrees "
        f"with the teacher on {(after == teacher).mean():.2f} of all clips, {(after == teacher)[right].mean():.2f} "
        "of those the teacher gets right"
    )
    assert (after == teacher)[right].mean() >= 0.9 and (after == truth).mean() >= 0.9
    assert (before == truth).mean() < 0.5  # what distillation taught


def test_single_language_recipe_trains_and_scores_in_that_language(base, multilingual_base_dir, tmp_path):
    """Upstream's recipe, a student for one language: the German training speech labelled with --language de,
    a student distilled on it for a few steps (the demo's flags, through each stage's own parser); every training
    sequence is prompted <|de|>, and eval reports the student's German."""
    sizes = Sizes(max_steps=2, batch=1, train_rows=4, eval_rows=2)
    cmds = multilingual_commands(tmp_path, multilingual_base_dir, ["de"], sizes)
    assert cmds["label"][cmds["label"].index("--language") + 1] == "de"
    create_student(base, tmp_path / "student", decoder_layers=2)
    evaluate = [*cmds["eval/student_trained"], "--predictions_csv"]
    # Each stage runs as its command in a process of its own on 2 devices: whisper-base replicated over the suite's
    # 8 emulated devices (teacher, student, optimiser state) added 8 GB to the test process, its largest cost.
    for module, argv in (("pseudo_label", cmds["label"]), ("distill", cmds["train"]), ("eval", evaluate)):
        cmd = [sys.executable, "-m", f"distil_whisper_jax.cli.{module}", *argv]
        proc = subprocess.run(cmd, env=subprocess_env(2), cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, (module, proc.stdout[-2000:], proc.stderr[-4000:])
    labelled = labelled_rows(tmp_path / "labelled")
    assert [r["language"] for r in labelled] == ["de"] * 4
    sp = special_tokens(base.tokenizer)
    sources = train_data.open_sources(str(tmp_path / "labelled"))
    stream = train_data.TrainStream(sources, None, base.tokenizer, sp, train_data.DataOptions(), seed=0)
    for _ in range(4):
        ex = stream.next_example()
        i = ex.sequence.index(sp.sot)
        assert ex.sequence[i : i + 3] == [sp.sot, sp.lang_to_id["de"], sp.transcribe], ex.sequence
    res = json.loads((tmp_path / "eval" / "student_trained" / "results.json").read_text())
    assert list(res["languages"]) == ["de"] and res["languages"]["de"]["num_samples"] == 2
    rows = read_tsv(tmp_path / "data" / "de" / "heldout.tsv")
    refs, preds = zip(*predictions_by_language(tmp_path / "eval" / "student_trained" / "predictions.csv", rows)["de"])
    assert res["languages"]["de"]["wer"] == pytest.approx(wer(refs, preds, language="de")), preds
    # Two steps do not make a transcriber of a student cut to 2 decoder layers: measured, it ends every transcript
    # at once (empty predictions, WER 100 %). A figure near whisper-base's German (~30 %) would mean that eval
    # scored the teacher, not the student it was given.
    assert res["languages"]["de"]["wer"] >= 90, preds


def test_languages_a_model_cannot_take_are_refused_before_work(base, manifests, tmp_path):
    m = str(manifests[0])
    with pytest.raises(data.DataConfigError, match="English-only"):  # the bundled tiny.en teacher
        pl.setup(pl.PseudoLabelConfig(dataset_name=m, language="fr", output_dir=str(tmp_path / "a")))
    with pytest.raises(data.DataConfigError, match="unknown language 'klingon'"):
        pl.setup(pl.PseudoLabelConfig(dataset_name=m, language="klingon", output_dir=str(tmp_path / "b")))
    with pytest.raises(data.DataConfigError, match="2 '\\+'-separated entries for 1 datasets"):
        pl.setup(pl.PseudoLabelConfig(dataset_name=m, language="fr+de", output_dir=str(tmp_path / "c")))
    with pytest.raises(data.DataConfigError, match="English-only"):
        evaluation.setup(evaluation.EvalConfig(dataset_name=m, language_column_name="text", output_dir=str(tmp_path)))
