"""The demo's ``--multilingual`` mode, offline on what the ``multilingual`` extra and the package ship.

multilingual whisper-base teacher → 2-layer student (its decoder layers 0 and 5) → pseudo-labels of the bundled
French, German and Spanish training speech (``--language fr+de+es``: one language per dataset) → distillation
with the frozen encoder cached → per language, on held-out sentences: greedy WER (``distil-whisper-eval`` with
``--language_column_name language``) and language-identification accuracy (``generate.detect_language``) of the
teacher, the student before training and after. No export (the English demo covers the exporters).

Each stage is given its typed run config (``multilingual_configs``) and run by its ``run(cfg)``, as the English
demo's are.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from distil_whisper_jax.assets import SPEECH_LANGUAGES, multilingual_speech_manifest
from distil_whisper_jax.decode.generate import detect_language
from distil_whisper_jax.infra import delimited
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import special_tokens
from distil_whisper_jax.stages import distill, evaluate, label
from distil_whisper_jax.stages.demo.common import check_stage, commands, subset_manifest, timed
from distil_whisper_jax.stages.student import create_student
from distil_whisper_jax.weights.loading import Pretrained, load_pretrained, multilingual_base_dir

WORK = "multilingual"  # under --output_dir, beside the English demo's directories
SUMMARY = "multilingual_summary.json"  # in --output_dir
MODELS = ("teacher", "student_untrained", "student_trained")
LEARNING_RATE, WARMUP, MAX_LABEL_LENGTH = 1e-3, 5, 64  # labels are ≤ 18 words (< 60 tokens)


def parse_languages(spec: str) -> list[str]:
    """The ``+``-joined languages of the bundled corpus (``fr+de+es``); ``ValueError`` names the flag."""
    langs = spec.split("+")
    if any(lang not in SPEECH_LANGUAGES for lang in langs) or len(set(langs)) != len(langs):
        raise ValueError(f"--languages {spec!r}: '+'-join distinct codes of {', '.join(SPEECH_LANGUAGES)}")
    return langs


def corpus(work: Path, languages: list[str], split: str, rows: int | None) -> list[Path]:
    """One manifest per language: the bundled split, or ``rows`` of it spread over its speakers."""
    full = [multilingual_speech_manifest(lang, split) for lang in languages]
    return [subset_manifest(f, rows, work / "data" / lang / f"{split}.tsv") for f, lang in zip(full, languages)]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much the demo trains and evaluates: steps, training examples per device per step, and clips per
    language (spread over its speakers; ``None``: all) labelled and evaluated."""

    max_steps: int
    batch: int = 8
    train_rows: int | None = None
    eval_rows: int | None = None


def multilingual_configs(work: Path, teacher: Path, languages: list[str], sizes: Sizes) -> dict[str, Any]:
    """The typed config of each stage: ``label``, ``train`` and one ``eval/<model>`` per model of ``MODELS``; the
    manifests of ``sizes``' subsets are written into ``work``."""
    work = Path(work)
    max_steps = sizes.max_steps
    train = "+".join(map(str, corpus(work, languages, "train", sizes.train_rows)))
    heldout = "+".join(map(str, corpus(work, languages, "heldout", sizes.eval_rows)))
    labelled = label.PseudoLabelConfig(
        model_name_or_path=str(teacher),
        dataset_name=train,
        language="+".join(languages),
        text_column_name="text",
        output_dir=str(work / "labelled"),
        per_device_eval_batch_size=4,
        num_local_devices=1,
        max_label_length=MAX_LABEL_LENGTH,
    )
    run = distill.DistillConfig(
        model_name_or_path=str(work / "student"),
        train_dataset_name=str(work / "labelled"),
        output_dir=str(work / "run"),
        freeze_encoder=True,
        cache_encoder_outputs=True,
        max_steps=max_steps,
        per_device_train_batch_size=sizes.batch,
        learning_rate=LEARNING_RATE,
        warmup_steps=min(WARMUP, max_steps - 1),
        max_label_length=MAX_LABEL_LENGTH,
        save_steps=max_steps,
        logging_steps=max(max_steps // 10, 1),
        seed=0,
    )
    cfgs: dict[str, Any] = {"label": labelled, "train": run}
    models = {"teacher": teacher, "student_untrained": work / "student", "student_trained": work / "run" / "hf"}
    for name, model in models.items():
        cfgs[f"eval/{name}"] = evaluate.EvalConfig(
            model_name_or_path=str(model),
            dataset_name=heldout,
            language_column_name="language",
            text_column_name="text",
            output_dir=str(work / "eval" / name),
            max_new_tokens=64,
            per_device_eval_batch_size=8,
            num_local_devices=1,
        )
    return cfgs


def multilingual_commands(work: Path, teacher: Path, languages: list[str], sizes: Sizes) -> dict[str, list[str]]:
    """``multilingual_configs`` as the command lines a user would type."""
    return commands(multilingual_configs(work, teacher, languages, sizes))


def detected_languages(model: Pretrained, waves: list[np.ndarray], batch_size: int = 8) -> list[str]:
    """The most likely language code of each waveform (``detect_language`` over every language token)."""
    sp = special_tokens(model.tokenizer)
    codes = {i: code for code, i in sp.lang_to_id.items()}
    out = []
    for i in range(0, len(waves), batch_size):
        mel = audio.log_mel_spectrogram(waves[i : i + batch_size], n_mels=model.config.num_mel_bins)
        probs = detect_language(model.params, mel, model.config, sp.sot, sp.language_ids)
        out += [codes[sp.language_ids[k]] for k in probs.argmax(-1)]
    return out


def language_id_accuracy(model_dir: Path, manifests: list[Path], languages: list[str]) -> dict[str, float]:
    """Per language (and ``overall``): the share of its manifest's clips the model identifies as that language."""
    model = load_pretrained(model_dir)
    right: dict[str, list[bool]] = {}
    for path, lang in zip(manifests, languages):
        clips = [path.parent / r["audio"] for r in delimited.read_rows(path)]
        right[lang] = [d == lang for d in detected_languages(model, [audio.load_audio(c) for c in clips])]
    every = [r for rs in right.values() for r in rs]
    return {**{lang: float(np.mean(rs)) for lang, rs in right.items()}, "overall": float(np.mean(every))}


def summarize(work: Path, languages: list[str], lid: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The per-language figures of the three models: held-out WER from each eval's ``results.json``, language ID."""
    results = {m: json.loads((work / "eval" / m / "results.json").read_text()) for m in MODELS}
    out: dict[str, Any] = {}
    for lang in [*languages, "overall"]:
        stats = {m: r["overall"] if lang == "overall" else r["languages"][lang] for m, r in results.items()}
        out[lang] = {
            "clips": stats["teacher"]["num_samples"],
            "reference_words": stats["teacher"]["reference_words"],
            "wer": {m: s["wer"] for m, s in stats.items()},
            "language_id_accuracy": {m: lid[m][lang] for m in MODELS},
        }
    return out


def run_pipeline(work: Path, languages: list[str], sizes: Sizes, teacher: Path | None = None) -> dict[str, Any]:
    """Every stage in ``work``; returns wall times, the labelling report and the per-language figures."""
    work = Path(work)
    teacher = Path(teacher or multilingual_base_dir())
    cfgs = multilingual_configs(work, teacher, languages, sizes)
    times: dict[str, float] = {}
    make_student = functools.partial(create_student.create_student, overwrite=True)  # a resumed demo: the same again
    timed(times, "create_student", make_student, str(teacher), work / "student", 2)
    labelled = timed(times, "pseudo_label", label.run, cfgs["label"])
    check_stage(labelled, "labelling", work / "labelled")
    check_stage(timed(times, "distill", distill.run, cfgs["train"]), "distillation", work / "run")
    lid = {}
    heldout = corpus(work, languages, "heldout", sizes.eval_rows)
    for m in MODELS:
        cfg = cfgs[f"eval/{m}"]
        check_stage(timed(times, f"eval_{m}", evaluate.run, cfg), "evaluation", work / "eval")
        model = Path(cfg.model_name_or_path)
        lid[m] = timed(times, f"language_id_{m}", language_id_accuracy, model, heldout, languages)
    return {
        "work": str(work),
        "languages": languages,
        "max_steps": sizes.max_steps,
        "per_device_train_batch_size": sizes.batch,
        "times_s": times,
        "labelled": json.loads((work / "labelled" / "report.json").read_text()),
        "results": summarize(work, languages, lid),
    }


def print_summary(r: dict[str, Any]) -> None:
    """The stage times and the per-language table of held-out WER and language-ID accuracy."""
    print("\nstage                          wall s")
    for name, s in r["times_s"].items():
        print(f"{name:<30} {s:7.1f}")
    print(
        f"\n{'':<9}{'':>6}  {'held-out WER %':^24}  {'language ID accuracy':^24}\n"
        f"{'language':<9}{'clips':>6}  {'teacher':>8}{'before':>8}{'after':>8}  {'teacher':>8}{'before':>8}{'after':>8}"
    )
    for lang, d in r["results"].items():
        w = [("–" if d["wer"][m] is None else f"{d['wer'][m]:.1f}") for m in MODELS]
        a = [f"{d['language_id_accuracy'][m]:.2f}" for m in MODELS]
        print(f"{lang:<9}{d['clips']:>6}  {''.join(f'{x:>8}' for x in w)}  {''.join(f'{x:>8}' for x in a)}")
    print(f"(2-layer student before training and after {r['max_steps']} steps; teacher: multilingual whisper-base)")


def run(output_dir: Path, languages_flag: str, sizes: Sizes) -> int:
    """The demo's ``--multilingual`` command: checks the extra is installed (before any work), runs every stage,
    prints the table and writes ``<output_dir>/multilingual_summary.json``."""
    languages = parse_languages(languages_flag)
    teacher = multilingual_base_dir()  # ValueError naming the extra when its packages are missing
    out = Path(output_dir)
    work = out / WORK
    if (work / "labelled").exists() or (work / "run").exists():
        print(f"note: {work} holds an earlier demo; finished stages are resumed, not redone", file=sys.stderr)
    r = run_pipeline(work, languages, sizes, teacher)
    print_summary(r)
    with atomic_write(out / SUMMARY, "w") as f:
        json.dump(r, f, indent=2)
    print(f"summary: {out / SUMMARY}")
    return 0
