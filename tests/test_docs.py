"""What README and docs/ say is what the repository holds: every benchmark figure they quote is the one in the
committed ``benchmarks/results/*.json``, the README's commands are the ones CI runs, and no text cites a document
outside the repository.

To change a quoted figure: re-run the benchmark (``python -m benchmarks.<name>``), then make the text say what the
failure message of this test asks for (or, when a sentence is reworded, update its entry in ``QUOTES``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README, BENCH, SPEECH = "README.md", "docs/benchmarks.md", "distil_whisper_jax/assets/speech/README.md"
SPEECH_ML = "distil_whisper_jax/assets/speech_multilingual/README.md"

Getter = Callable[[Any], float]


def at(*keys: str | int) -> Getter:
    """The value at ``keys`` in the JSON (dict keys or list indices)."""

    def get(d: Any) -> float:
        for k in keys:
            d = d[k]
        return d

    get.__name__ = ".".join(map(str, keys))
    return get


def scaled(getter: Getter, factor: float) -> Getter:
    def get(d: Any) -> float:
        return getter(d) * factor

    get.__name__ = f"{getter.__name__} × {factor:g}"
    return get


def _ratio(num: Getter, den: Getter) -> Getter:
    def get(d: Any) -> float:
        return num(d) / den(d)

    get.__name__ = f"{num.__name__} / {den.__name__}"
    return get


def _engine_row(engine: str, batch: str) -> list[tuple[Getter, str]]:
    r = ("results", engine, batch)
    return [(at(*r, "audio_s_per_s"), ".1f"), (at(*r, "tokens_per_s"), ".0f"), (at(*r, "cpu_util"), ".2f")]


def _peer_row(section: str, i: int) -> list[tuple[Getter, str]]:
    r = (section, "rows", i)
    return [(at(*r, "speed"), ".2f"), (at(*r, "vs_transformers"), ".2f"), (at(*r, "wer"), ".2f")]


# export table: its unquantized format → the name its JSON gives that type (what the others are compared with)
EXPORT_REFERENCE = {"ggml": "f16", "ct2": "float32"}


def _export_row(fmt: str) -> list[tuple[Getter, str]]:
    """An export table's figures for ``fmt`` (whisper.cpp ``ggml*`` or CTranslate2 ``ct2*``): size, write time,
    WER, and size and WER against the unquantized type of its family."""
    base = fmt.split("-")[0]
    ref = EXPORT_REFERENCE[base]
    r = ("formats", fmt)
    row = [
        (at(*r, "bytes"), ","),
        (at(*r, f"vs_{ref}_size"), ".2f"),
        (at(*r, "write_wall_s"), ".1f"),
        (at(*r, "wer"), ".2f"),
    ]
    return row if fmt == base else [*row, (at(*r, f"wer_vs_{ref}"), "+.2f")]


def _ct2_words_gained(d: Any) -> int:
    return -round(d["formats"]["ct2-int8"]["wer_vs_float32"] * d["words"] / 100)


def _words_lost(fmt: str) -> Getter:
    def get(d: Any) -> int:
        return round(d["formats"][fmt]["wer_vs_f16"] * d["words"] / 100)

    get.__name__ = f"formats.{fmt}.wer_vs_f16 × words / 100"
    return get


def _spec_row(i: int) -> list[tuple[Getter, str]]:
    r = ("rows", i)
    return [
        (at(*r, "teacher_speed"), ".2f"),
        (at(*r, "speculative_speed"), ".2f"),
        (at(*r, "speedup"), ".2f"),
        (scaled(at(*r, "acceptance"), 100), ".1f"),
        (at(*r, "rows_differing"), "d"),
    ]


def _step_row(variant: str) -> list[tuple[Getter, str]]:
    r = ("results", variant)
    return [
        (at(*r, "step_s_median"), ".2f"),
        (at(*r, "steps_per_s"), ".3f"),
        (at(*r, "samples_per_s"), ".2f"),
        (scaled(at(*r, "model_flops", "total"), 1e-9), ".1f"),
        (scaled(at(*r, "xla_cost_analysis_flops"), 1e-9), ".1f"),
        (scaled(at(*r, "mfu"), 100), ".1f"),
        (scaled(at(*r, "mfu_cpu_time"), 100), ".1f"),
        (at(*r, "first_call_s"), ".1f"),
    ]


T, PL, TS, EX, DD = "transcribe.json", "pseudo_label.json", "train_step.json", "export.json", "distill_demo.json"
LANGS, DM = "docs/languages.md", "demo_multilingual.json"
EQ, EC = "export_quant.json", "export_ct2.json"
PE, SP, PS = "peers.json", "speculative.json", ("summary",)
J8, J1 = ("results", "jax", "8"), ("results", "jax", "1")
ENC = ("encoder",)
RUN = ("runs", 0)
DEMO_WERS = [
    (at("wer", "teacher"), ".1f"),
    (at("wer", "student_untrained"), ".1f"),
    (at("wer", "student_trained"), ".1f"),
]


def _ml_demo_row(lang: str) -> list[tuple[Getter, str]]:
    r = ("results", lang)
    models = ("teacher", "student_untrained", "student_trained")
    return [
        (at(*r, "clips"), "d"),
        *[(at(*r, "wer", m), ".1f") for m in models],
        *[(at(*r, "language_id_accuracy", m), ".2f") for m in models],
    ]


# (document, text with {} where each figure stands, results file, [(value, format), ...])
DQ, SUITE, WS, SLOW = "distill_quality.json", "test_suite.json", "warm_start.json", "slow_suite.json"
DQ15, WINDOW_SPEED = "distill_quality_15s.json", ("models", "teacher_window", "heldout_audio_s_per_s")
SS, DS, SPD = "student_speed.json", "data_scaling.json", "speculative_draft_vocab.json"


def _scaling_row(i: int) -> list[tuple[Getter, str]]:
    """One size of the data curve: hours, labelled hours and rows, both gaps with their intervals, the CE."""
    r = ("points", i)
    gaps = [
        (at(*r, "gap", k, *key), ".2f")
        for k in ("heldout_new_voices", "real")
        for key in (("value",), ("interval_95", 0), ("interval_95", 1))
    ]
    return [(at(*r, "hours"), "g"), (at(*r, "labelled", "audio_hours_written"), ".2f"),
            (at(*r, "labelled", "rows_written"), "d"), *gaps, (at(*r, "ce"), ".3f")]  # fmt: skip


ML, SPM, WSA = "multilingual_student.json", "speculative_multilingual.json", "warm_start_amd_epyc.json"


def _ml_student_row(lang: str) -> list[tuple[Getter, str]]:
    """One language of the real-speech multilingual student: prompts, words, teacher/student WER, the gap."""
    k = f"heldout_{lang}"
    return [(at("heldout_prompts", k), "d"), (lambda d: sum(n for _, n in d["models"]["teacher"]["rows"][k]), "d"),
            (at("models", "teacher", "wer", k), ".2f"), (at("models", "student_trained", "wer", k), ".2f"),
            *[(at("gaps", k, key), ".2f") for key in ("value", "low", "high")]]  # fmt: skip


def in_other(results: str, getter: Getter) -> Getter:
    """``getter`` applied to another committed JSON (a table that sets two runs side by side)."""

    def get(d: Any) -> float:
        return getter(json.loads((RESULTS / results).read_text(encoding="utf-8")))

    get.__name__ = f"{results}:{getter.__name__}"
    return get


ML30, SPM30 = "multilingual_student_30s.json", "speculative_multilingual_30s.json"
LFV = "longform_vad_fixes.json"  # vad with its loop fallback and unsaid tails, against faster-whisper batched


def _lfv_row(rec: str) -> list[tuple[Getter, str]]:
    r = ("summary", "recordings", rec)
    keys = ("vad_wer", "fw_batched_wer", "vad_vs_fw_batched_decode", "vad_vs_fw_batched_whole_process")
    return [(at(*r, k), ".2f") for k in keys]


def _spm30_row(i: int) -> list[tuple[Getter, str]]:
    """One row of the shared-encoder speculative table: prompts, shortlist, speeds, acceptance, passes, differing."""
    r = ("rows", i)
    return [(at(*r, "items"), "d"), (lambda d: d["rows"][i]["draft_vocab"] or "all", ""),
            (at(*r, "teacher_speed"), ".2f"), (at(*r, "speculative_speed"), ".2f"), (at(*r, "speedup"), ".2f"),
            (scaled(at(*r, "acceptance"), 100), ".1f"), (at(*r, "teacher_passes"), "d"),
            (at(*r, "rows_differing"), "d")]  # fmt: skip


def _ml30_row(lang: str) -> list[tuple[Getter, str]]:
    """One language of the 30 s student: teacher/student WER, the gap with its interval, the 15 s student's gap."""
    k = f"heldout_{lang}"
    return [(at("models", "teacher", "wer", k), ".2f"), (at("models", "student_trained", "wer", k), ".2f"),
            *[(at("gaps", k, key), ".2f") for key in ("value", "low", "high")],
            (in_other(ML, at("gaps", k, "value")), ".2f")]  # fmt: skip


def _draft_row(i: int) -> list[tuple[Getter, str]]:
    """One row of the draft-vocabulary table: dtype, shortlist size (or all), speeds, acceptance, passes."""
    r = ("rows", i)
    return [(at(*r, "dtype"), "s"), (lambda d: d["rows"][i]["draft_vocab"] or "all", ""),
            (at(*r, "teacher_speed"), ".2f"), (at(*r, "speculative_speed"), ".2f"), (at(*r, "speedup"), ".2f"),
            (lambda d: 100 * d["rows"][i]["acceptance"], ".1f"), (at(*r, "teacher_passes"), "d"),
            (at(*r, "rows_differing"), "d"), (at("items"), "d")]  # fmt: skip


def _speed_row(i: int) -> tuple[str, str, str, list[tuple[Getter, str]]]:
    """One row of the student_speed table: teacher, layers and window as text, the figures from the JSON."""
    r = ("rows", i)
    return (
        BENCH,
        "| {} | {} | {} s | {} | {}× | {} | {} |",
        SS,
        [
            (at(*r, "teacher"), "s"),
            (at(*r, "decoder_layers"), "d"),
            (at(*r, "window_s"), "g"),
            (at(*r, "ms_per_clip"), ".0f"),
            (at(*r, "speedup"), ".2f"),
            (at(*r, "fixed_ms"), ".0f"),
            (at(*r, "per_token_ms"), ".1f"),
        ],
    )


def _ss(i: int, key: str, fmt: str) -> tuple[Getter, str]:
    return at("rows", i, key), fmt


def _warm(command: str, mode: str, key: str = "wall_seconds") -> tuple[Getter, str]:
    return at("results", command, mode, key), ".1f"


def _largest_step_gib(d: Any) -> float:
    """The largest rise of the pytest process's peak memory over one test, in GiB."""
    peaks = [0] + [t["pytest_peak_mib"] for t in d["tests"]]
    return max(b - a for a, b in zip(peaks, peaks[1:])) / 1024


def _quality_row(model: str) -> list[tuple[Getter, str]]:
    m = ("models", model)
    wers = [(at(*m, "wer", k), ".2f") for k in ("real", "heldout_new_voices", "heldout_seen_voice")]
    return [*wers, (at(*m, "heldout_audio_s_per_s"), ".1f")]


def _gap(key: str) -> Getter:
    def get(d: Any) -> float:
        return d["models"]["student_trained"]["wer"][key] - d["models"]["teacher"]["wer"][key]

    get.__name__ = f"student_trained − teacher WER on {key}"
    return get


def _curve(step: int, key: str) -> Getter:
    def get(d: Any) -> float:
        return next(p["ce"][key] for p in d["curve"] if p["step"] == step)

    get.__name__ = f"curve step {step} ce {key}"
    return get


LF, LONGFORM, LFP = "longform.json", "docs/longform.md", ("summary", "pooled")
LF_RECORDINGS = ("fr", "es", "it", "ru", "en", "narrative")
LF_ENGINES = {"ours-vad": "vad", "ours-chunked": "chunked", "ours-sequential": "sequential",
              "fw-batched": "faster-whisper batched", "fw-sequential": "faster-whisper sequential",
              "hf-pipeline": "transformers pipeline"}  # fmt: skip
LFA = "longform_amd_epyc.json"  # the same benchmark on an AMD machine, with faster-whisper's MKL setting as well
LFA_ENGINES = {**LF_ENGINES, "fw-batched-mkl": "faster-whisper batched, `CT2_USE_MKL=1`"}


def _lf(rec: str, engine: str, key: str) -> Getter:
    """A figure of one engine's row on one recording of the long-form benchmark."""

    def get(d: Any) -> float:
        return next(r for r in d["recordings"][rec]["rows"] if r["engine"] == engine)[key]

    get.__name__ = f"recordings.{rec}.rows[{engine}].{key}"
    return get


def _lf_row(rec: str, engine: str) -> list[tuple[Getter, str]]:
    return [(_lf(rec, engine, "wer"), ".2f"), (_lf(rec, engine, "decode_speed"), ".1f"),
            (_lf(rec, engine, "decode_vs_fw_batched"), ".2f"), (_lf(rec, engine, "whole_process_speed"), ".1f"),
            (_lf(rec, engine, "whole_process_vs_fw_batched"), ".2f")]  # fmt: skip


def _lf_vad_wer_at_or_below(d: Any) -> int:
    """On how many recordings vad's WER is at or below faster-whisper's batched pipeline's."""
    return sum(r["vad_wer_minus_fw_batched"] <= 0 for r in d["summary"]["recordings"].values())


QUOTES: list[tuple[str, str, str, list[tuple[Getter, str]]]] = [
    (README, "On 2 CPU cores it takes about {} minutes after the install", DD, [
        (scaled(at("total_s"), 1 / 60), ".0f")]),
    (README, "held-out WER teacher {} %, student {} % before and {} % after training", DD, DEMO_WERS),
    (README, "{}× transformers PyTorch at batch 1, {}× at batch 8", T, [
        (at("ratios", "jax/transformers@1"), ".2f"), (at("ratios", "jax/transformers@8"), ".2f")]),
    (README, "the per-repeat ratios at batch 8 have a median of {}×); {}× CTranslate2 at batch 8", T, [
        (at("paired_ratios", "jax/transformers@8", "median"), ".2f"), (at("ratios", "jax/ct2@8"), ".2f")]),
    (README, "encoder at {} % of the measured matmul peak", T, [(at(*ENC, "pct_of_matmul_peak"), ".0f")]),
    (README, "CPU labelling speed {}× the transformers ASR pipeline", PL, [(at(*RUN, "speedup"), ".2f")]),
    (README, "({}× at batch 1 with whisper-base", SP, [(at("rows", 3, "speedup"), ".2f")]),
    (README, "`--long_form vad` has a WER at or below faster-whisper's batched pipeline on {} of 6, at {}× its speed "
     "decode-only and {}× whole process (target 1×: missed; chunked {}×", LF, [
        (_lf_vad_wer_at_or_below, "d"), (at(*LFP, "ours-vad", "decode_vs_fw_batched"), ".2f"),
        (at(*LFP, "ours-vad", "whole_process_vs_fw_batched"), ".2f"),
        (at(*LFP, "ours-chunked", "decode_vs_fw_batched"), ".2f")]),
    (README, "the demo's 2-layer 30 s student is {}× its tiny.en teacher at batch 1", PE, [
        (at(*PS, "student_vs_teacher_batch1"), ".2f")]),
    (BENCH, "| this project (JAX, fp32, 1 device) | 1 | {} | {} | {} | {} |", T, [
        *_engine_row("jax", "1"), (at(*J1, "compile_s"), ".1f")]),
    (BENCH, "| this project (JAX, fp32, 1 device) | 8 | {} | {} | {} | {} |", T, [
        *_engine_row("jax", "8"), (at(*J8, "compile_s"), ".1f")]),
    (BENCH, "| transformers PyTorch `generate` fp32 | 1 | {} | {} | {} | – |", T, _engine_row("transformers", "1")),
    (BENCH, "| transformers PyTorch `generate` fp32 | 8 | {} | {} | {} | – |", T, _engine_row("transformers", "8")),
    (BENCH, "| CTranslate2 fp32 | 1 | {} | {} | {} | – |", T, _engine_row("ct2", "1")),
    (BENCH, "| CTranslate2 fp32 | 8 | {} | {} | {} | – |", T, _engine_row("ct2", "8")),
    (BENCH, "JAX/transformers **{}× at batch 1 and {}× at batch 8**", T, [
        (at("ratios", "jax/transformers@1"), ".2f"), (at("ratios", "jax/transformers@8"), ".2f")]),
    (BENCH, "JAX/CTranslate2 **{}× at batch 1 and {}× at batch 8**", T, [
        (at("ratios", "jax/ct2@1"), ".2f"), (at("ratios", "jax/ct2@8"), ".2f")]),
    (BENCH, "the median of those is {}× against transformers (range {}–{} over the 5 repeats", T, [
        (at("paired_ratios", "jax/transformers@8", "median"), ".2f"),
        (at("paired_ratios", "jax/transformers@8", "min"), ".2f"),
        (at("paired_ratios", "jax/transformers@8", "max"), ".2f")]),
    (BENCH, "and {}× against CTranslate2", T, [(at("paired_ratios", "jax/ct2@8", "median"), ".2f")]),
    (BENCH, "The encoder forward at batch 8 costs {} GFLOP by analytic count", T, [
        (scaled(at(*ENC, "analytic_flops", "total"), 1e-9), ".1f")]),
    (BENCH, "XLA's cost analysis reports {} GFLOP", T, [(scaled(at(*ENC, "xla_cost_analysis_flops"), 1e-9), ".1f")]),
    (BENCH, "takes {} s, which is {} GFLOP/s", T, [
        (at(*ENC, "jax_s"), ".2f"), (scaled(at(*ENC, "jax_flops_per_s"), 1e-9), ".0f")]),
    (BENCH, "is {} GFLOP/s, so the encoder reaches **{} % of peak**; it is {}× faster than transformers' encoder", T, [
        (scaled(at(*ENC, "matmul_peak_flops_per_s", "peak"), 1e-9), ".0f"),
        (at(*ENC, "pct_of_matmul_peak"), ".0f"),
        (_ratio(at(*ENC, "transformers_s"), at(*ENC, "jax_s")), ".2f")]),
    (BENCH, "| unshared (teacher + student encoder passes) | {} | {} | {} | {} | {} | {} % | {} % | {} |", TS,
     _step_row("unshared")),
    (BENCH, "| **shared** (one encoder pass, stop_gradient) | {} | {} | {} | {} | {} | {} % | {} % | {} |", TS,
     _step_row("shared")),
    (BENCH, "| cached encoder outputs (decoders only) | {} | {} | {} | {} | {} | {} % | {} % | {} |", TS,
     _step_row("cached")),
    (BENCH, "Shared / unshared step speed: **{}×**", TS, [(at("ratios", "shared_vs_unshared_speed"), ".2f")]),
    (BENCH, "Cached / unshared: {}×", TS, [(at("ratios", "cached_vs_unshared_speed"), ".2f")]),
    (BENCH, "**met by all three steps ({} / {} / {} %)**", TS, [
        (scaled(at("results", v, "mfu"), 100), ".1f") for v in ("unshared", "shared", "cached")]),
    (BENCH, "| load tiny.en (CT2 fp16) + tokenizer | {} | {} | – |", EX, [
        (at("stages", 0, "wall_s"), ".1f"), (at("stages", 0, "cpu_s"), ".1f")]),
    (BENCH, "| verify: JAX reference + 3 runtime subprocesses, 5 clips | {} | {} | {} |", EX, [
        (at("stages", 5, "wall_s"), ".1f"), (at("stages", 5, "cpu_s"), ".1f"),
        (at("stages", 5, "subprocess_cpu_s"), ".1f")]),
    (BENCH, "**{} s: the < 60 s target is met.**", EX, [(at("total_wall_s"), ".0f")]),
    (BENCH, "`hf/` {} bytes", EX, [(at("sizes_bytes", "hf"), ",")]),
    (BENCH, "`original-model.bin` {}, `ggml-model.bin` {}, `ggml-model-q8_0.bin` {}", EX, [
        (at("sizes_bytes", k), ",") for k in ("openai", "ggml", "ggml-q8_0")]),
    (BENCH, "(load average {} at the end; raw numbers: `benchmarks/results/export_quant.json`)", EQ, [
        (at("load_average", 0), "")]),
    (BENCH, "on all {} held-out sentences of the bundled speech corpus ({} words, joined into {} windows", EQ, [
        (at("clips"), "d"), (at("words"), "d"), (at("windows"), "d")]),
    (BENCH, "| f16 | `ggml-model.bin` | {} | {} | {} | {} | – |", EQ, _export_row("ggml")),
    *[(BENCH, f"| {q} | `ggml-model-{q}.bin` | {{}} | {{}} | {{}} | {{}} | {{}} |", EQ, _export_row(f"ggml-{q}"))
      for q in ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")],
    (BENCH, "(load average {} at the end; raw numbers: `benchmarks/results/export_ct2.json`)", EC, [
        (at("load_average", 0), "")]),
    (BENCH, "| float32 | `ct2/` | {} | {} | {} | {} | – |", EC, _export_row("ct2")),
    (BENCH, "| float16 | `ct2-float16/` | {} | {} | {} | {} | {} |", EC, _export_row("ct2-float16")),
    (BENCH, "| int8 | `ct2-int8/` | {} | {} | {} | {} | {} |", EC, _export_row("ct2-int8")),
    (BENCH, "int8 {} words better here", EC, [(_ct2_words_gained, "d")]),
    (BENCH, "One word is {} points here", EQ, [(_ratio(lambda d: 100, at("words")), ".2f")]),
    (BENCH, "q4_0 is {} words and q4_1 {} words worse", EQ, [(_words_lost("ggml-q4_0"), "d"),
                                                            (_words_lost("ggml-q4_1"), "d")]),
    (BENCH, "| this project, labelling (`report.json` throughput) | 8 | {} | – | {} |", PL, [
        (at(*RUN, "ours_labelling_s"), ".2f"), (at(*RUN, "ours_audio_s_per_s"), ".1f")]),
    (BENCH, "| this project, whole `main` incl. model loading and report | 8 | {} | {} |", PL, [
        (at(*RUN, "ours_wall_s"), ".2f"), (at(*RUN, "ours_cpu_s"), ".2f")]),
    (BENCH, "| transformers ASR `pipeline` (PyTorch) | 8 | {} | {} | {} |", PL, [
        (at(*RUN, "transformers_pipeline_wall_s"), ".2f"), (at(*RUN, "transformers_pipeline_cpu_s"), ".2f"),
        (at(*RUN, "transformers_audio_s_per_s"), ".1f")]),
    (BENCH, "**{}× in wall time ({}× as the median of the per-repeat ratios; {}× counting our model loading and "
     "report), {}× in CPU-seconds", PL, [
        (at(*RUN, k), ".2f") for k in ("speedup", "speedup_paired", "speedup_incl_our_setup", "speedup_cpu_seconds")]),
    (BENCH, "| 8 | {} MiB |", PL, [(at("rss_mib", "peak_1x"), ".0f")]),
    (BENCH, "| create the 2-layer student (teacher decoder layers 0, 3) | {} |", DD, [
        (at("times", "create_student_s"), ".1f")]),
    (BENCH, "→ {} concatenated rows ≤ 30 s) | {} |", DD, [
        (at("labelled_rows"), "d"), (at("times", "pseudo_label_s"), ".1f")]),
    (BENCH, "+ held-out eval before and after | {} |", DD, [(at("times", "train_s"), ".1f")]),
    (BENCH, "teacher {} %, student before training {} %, after 100 steps {} %", DD, DEMO_WERS),
    (BENCH, "run\nin it): {} GiB (target ≤ 4 GiB)", DD, [(at("peak_rss_gib", "demo_process"), ".2f")]),
    (BENCH, "RSS of the demo ≤ 4 GiB — met ({} GiB for the whole demo process", DD,
     [(at("peak_rss_gib", "demo_process"), ".2f")]),
    (BENCH, "| export to four formats, each verified in its runtime on the held-out sentences | {} |", DD,
     [(at("times", "export_s"), ".1f")]),
    (BENCH, "| total | {} |", DD, [(at("total_s"), ".1f")]),
    (BENCH, "peaked at {} GiB and each whisper.cpp file at {} / {} GiB, {} GiB together", DD, [
        (at("peak_rss_gib", "verification_subprocesses", k), ".2f")
        for k in ("hf + original-model.bin", "ggml-model.bin", "ggml-model-q8_0.bin", "sum")]),
    (BENCH, "| this project fp32, batch 1 | {} | {}× | {} |", PE, _peer_row("short_form", 0)),
    (BENCH, "| this project fp32, batch 8 | {} | {}× | {} |", PE, _peer_row("short_form", 1)),
    (BENCH, "| this project bf16, batch 8 | {} | {}× | {} |", PE, _peer_row("short_form", 2)),
    (BENCH, "| this project student fp32, batch 1 | {} | {}× | {} |", PE, _peer_row("short_form", 3)),
    (BENCH, "| this project student fp32, batch 8 | {} | {}× | {} |", PE, _peer_row("short_form", 4)),
    (BENCH, "| transformers generate, batch 1 | {} | {}× | {} |", PE, _peer_row("short_form", 5)),
    (BENCH, "| transformers generate, batch 8 | {} | {}× | {} |", PE, _peer_row("short_form", 6)),
    (BENCH, "| openai-whisper | {} | {}× | {} |", PE, _peer_row("short_form", 7)),
    (BENCH, "| faster-whisper fp32 | {} | {}× | {} |", PE, _peer_row("short_form", 8)),
    (BENCH, "| faster-whisper int8 | {} | {}× | {} |", PE, _peer_row("short_form", 9)),
    (BENCH, "| whisper.cpp f16 | {} | {}× | {} |", PE, _peer_row("short_form", 10)),
    (BENCH, "short-form: **{}× at batch 1 and {}× at batch 8** (target 1.8×", PE, [
        (at(*PS, "student_vs_teacher_batch1"), ".2f"), (at(*PS, "student_vs_teacher_batch8"), ".2f")]),
    (BENCH, "text exactly, at **{}×** the teacher's speed at batch 1", PE, [
        (at(*PS, "speculative_speedup_batch1"), ".2f")]),
    *[(BENCH, f"| {rec} | {name} | {{}} | {{}} | {{}}× | {{}} | {{}}× |", LF, _lf_row(rec, engine))
      for rec in LF_RECORDINGS for engine, name in LF_ENGINES.items()],
    (BENCH, "load average {} at the start, as the machine's test suite had just finished, and {} at the end", LF, [
        (at("machine", "load_avg_1m_start"), ".1f"), (at("machine", "load_avg_1m_end"), ".1f")]),
    (BENCH, "the machine was not idle), {} minutes", LF, [(scaled(at("total_s"), 1 / 60), ".0f")]),
    (BENCH, "**The goal is met on {} of the 6 recordings.**", LF, [(at("summary", "goal_met_on"), "d")]),
    *[(BENCH, f"| {rec} | {name} | {{}} | {{}} | {{}}× | {{}} | {{}}× |", LFA, _lf_row(rec, engine))
      for rec in LF_RECORDINGS for engine, name in LFA_ENGINES.items()],
    (BENCH, "(AMD EPYC, 2\ncores; load average {} at the start, as another benchmark had just ended, and {} at the "
     "end), {} minutes", LFA, [(at("machine", "load_avg_1m_start"), ".1f"), (at("machine", "load_avg_1m_end"), ".1f"),
                      (scaled(at("total_s"), 1 / 60), ".0f")]),
    (BENCH, "**The goal is met on {} of the 6 recordings.** Decode-only, vad is close: over all six it runs "
     "at\n  **{}×**", LFA, [
        (at("summary", "goal_met_on"), "d"), (at(*LFP, "ours-vad", "decode_vs_fw_batched"), ".2f")]),
    (BENCH, "and chunked at\n  {}×. Whole process, vad runs at **{}×**", LFA, [
        (at(*LFP, "ours-chunked", "decode_vs_fw_batched"), ".2f"),
        (at(*LFP, "ours-vad", "whole_process_vs_fw_batched"), ".2f")]),
    (BENCH, "**faster-whisper with MKL forced is slower here**: {}× its default decode-only, {}× whole process", LFA, [
        (at(*LFP, "fw-batched-mkl", "decode_vs_fw_batched"), ".2f"),
        (at(*LFP, "fw-batched-mkl", "whole_process_vs_fw_batched"), ".2f")]),
    (README, "reading their traced programs from the cache: {}× decode-only, {}× whole process", LFA, [
        (at(*LFP, "ours-vad", "decode_vs_fw_batched"), ".2f"),
        (at(*LFP, "ours-vad", "whole_process_vs_fw_batched"), ".2f")]),
    (LONGFORM, "vad {}× decode-only and {}× whole process,\nchunked {}× and {}×, sequential {}× and {}×", LFA, [
        (at(*LFP, e, f"{k}_vs_fw_batched"), ".2f") for e in ("ours-vad", "ours-chunked", "ours-sequential")
        for k in ("decode", "whole_process")]),
    (BENCH, "on {} of the 6 (fr, it, ru, en)", LF, [(_lf_vad_wer_at_or_below, "d")]),
    (BENCH, "Over all six recordings vad runs at **{}× its speed decode-only and {}× whole process**; chunked runs at "
     "{}× and {}×", LF, [(at(*LFP, e, k), ".2f") for e in ("ours-vad", "ours-chunked")
                         for k in ("decode_vs_fw_batched", "whole_process_vs_fw_batched")]),
    (BENCH, "into a repetition loop: {} inserted words each", LF, [(_lf("it", "ours-vad", "insertions"), "d")]),
    (BENCH, "score {} % there, the lowest of the six", LF, [(_lf("it", "ours-sequential", "wer"), ".2f")]),
    (BENCH, "{} deleted words on `fr`, against {} for vad", LF, [
        (_lf("fr", "ours-chunked", "deletions"), "d"), (_lf("fr", "ours-vad", "deletions"), "d")]),
    (BENCH, "vad deletes {} words and faster-whisper's batched pipeline {}; chunked deletes {} and sequential none",
     LF, [
        (_lf("es", e, "deletions"), "d") for e in ("ours-vad", "fw-batched", "ours-chunked")]),
    (BENCH, "{} deleted words against faster-whisper's {}", LF, [
        (_lf("ru", e, "deletions"), "d") for e in ("ours-sequential", "fw-sequential")]),
    (BENCH, "inserted\n  {} words.", LF, [(_lf("fr", "hf-pipeline", "insertions"), "d")]),
    *[(LONGFORM, f"| {name} | {{}} | {{}} | {{}} | {{}} | {{}} | {{}} | {{}}× | {{}}× |", LF, [
        *[(_lf(rec, engine, "wer"), ".2f") for rec in LF_RECORDINGS],
        (at(*LFP, engine, "decode_vs_fw_batched"), ".2f"), (at(*LFP, engine, "whole_process_vs_fw_batched"), ".2f")])
      for engine, name in LF_ENGINES.items()],
    (LONGFORM, "a repetition loop: {} inserted words, {} % WER", LF, [
        (_lf("it", "ours-vad", "insertions"), "d"), (_lf("it", "ours-vad", "wer"), ".2f")]),
    (LONGFORM, "({}× fw decode-only against vad's {}×)", LF, [
        (at(*LFP, e, "decode_vs_fw_batched"), ".2f") for e in ("ours-chunked", "ours-vad")]),
    (LONGFORM, "words are lost at the seams: {} of the {} words of the French recording, against {} for vad", LF, [
        (_lf("fr", "ours-chunked", "deletions"), "d"), (_lf("fr", "ours-vad", "reference_words"), "d"),
        (_lf("fr", "ours-vad", "deletions"), "d")]),
    (LONGFORM, "It costs speed: {}× fw decode-only", LF, [
        (at(*LFP, "ours-sequential", "decode_vs_fw_batched"), ".2f")]),
    (LONGFORM, "long stretches of the Russian recording ({} %)", LF, [(_lf("ru", "ours-sequential", "wer"), ".2f")]),
    (LONGFORM, "vad's WER is at or below it on {} of the 6 recordings, but vad runs at {}× its speed decode-only "
     "and {}× whole process", LF, [
        (_lf_vad_wer_at_or_below, "d"), (at(*LFP, "ours-vad", "decode_vs_fw_batched"), ".2f"),
        (at(*LFP, "ours-vad", "whole_process_vs_fw_batched"), ".2f")]),
    *[(BENCH, f"| {t} | {d} | {b} | {{}} | {{}} | {{}}× | {{}} % | {{}} of 53 |", SP, _spec_row(i))
      for i, (t, d, b) in enumerate([("tiny.en", "float32", 1), ("tiny.en", "float32", 4), ("tiny.en", "bfloat16", 1),
                                     ("base", "float32", 1), ("base", "float32", 4), ("base", "bfloat16", 1)])],
    (BENCH, "Here the acceptance is {} % for tiny.en and {} % for base", SP, [
        (scaled(at("rows", 0, "acceptance"), 100), ".0f"), (scaled(at("rows", 3, "acceptance"), 100), ".0f")]),
    (BENCH, "held-out WER after its 100 steps is {} % (teacher {} %), the tiny.en one's {} % on the voice", SP, [
        (at("students", "base", "eval_wer", "heldout", "student"), ".1f"),
        (at("students", "base", "eval_wer", "heldout", "teacher"), ".1f"),
        (at("students", "tiny.en", "eval_wer", "heldout", "student"), ".1f")]),
    (SPEECH, "**{} % on train, {} % on held-out**", "speech_corpus_wer.json", [
        (at("splits", split, "wer"), ".2f") for split in ("train", "heldout")]),
    (LANGS, "took about {} minutes on 2 CPU cores", DM, [(scaled(at("total_s"), 1 / 60), ".0f")]),
    (LANGS, "on those labels for {} steps of {} examples", DM, [
        (at("max_steps"), "d"), (at("per_device_train_batch_size"), "d")]),
    *[(LANGS, f"| {name} | {{}} | {{}} % | {{}} % | {{}} % | {{}} | {{}} | {{}} |", DM, _ml_demo_row(lang))
      for lang, name in (("fr", "French"), ("de", "German"), ("es", "Spanish"), ("overall", "all three"))],
    *[(SPEECH_ML, f"| {name} | {split_name} | {{}} | {{}} % | {{}} % |", "speech_multilingual_wer.json", [
        (at("languages", lang, split, "clips"), "d"), (at("languages", lang, split, "wer"), ".2f"),
        (at("languages", lang, split, "language_id_accuracy"), ".1f")])
      for lang, name in (("fr", "French"), ("de", "German"), ("es", "Spanish"))
      for split, split_name in (("train", "train"), ("heldout", "held-out"))],
    (BENCH, "(load average {} at the start:", DQ, [(at("machine", "load_avg_1m_start"), ".1f")]),
    (BENCH, "for the first quarter hour; {} at the end)", DQ, [(at("machine", "load_avg_1m_end"), ".1f")]),
    (BENCH, "{} of them from five novels", DQ, [(at("corpus", "sentences_available"), "d")]),
    (BENCH, "Twelve synthetic training speakers say {} hours of it", DQ, [
        (scaled(at("corpus", "seconds", "train"), 1 / 3600), ".2f")]),
    (BENCH, "no training speaker uses; {} s) and", DQ, [(at("corpus", "seconds", "heldout_new_voices"), ".1f")]),
    (BENCH, "no training speaker uses; {} s).", DQ, [(at("corpus", "seconds", "heldout_seen_voice"), ".1f")]),
    (BENCH, "The bundled tiny.en teacher labels the {} training clips", DQ, [(at("labelled", "rows_read"), "d")]),
    (BENCH, "scores {} % WER against the text", DQ, [(at("labelled", "wer_all_labelled"), ".2f")]),
    (BENCH, "{} rows ({} h) remain", DQ, [(at("labelled", "rows_written"), "d"),
                                          (at("labelled", "audio_hours_written"), ".2f")]),
    (BENCH, "{} steps of {} rows at learning rate {}, in {} minutes", DQ, [
        (at("config", "max_steps"), "d"), (at("config", "batch_size"), "d"), (at("config", "learning_rate"), "g"),
        (scaled(at("times_s", "train"), 1 / 60), ".1f")]),
    (BENCH, "That is {} s and 97 words", DQ, [(at("real_audio_s"), ".1f")]),
    (BENCH, "| teacher (tiny.en) | {} | {} | {} | {} |", DQ, _quality_row("teacher")),
    (BENCH, "| student, fresh from the cut | {} | {} | {} | {} |", DQ, _quality_row("student_fresh")),
    (BENCH, "| student, after 600 steps | {} | {} | {} | {} |", DQ, _quality_row("student_trained")),
    (BENCH, "**New voices:** {} points above the teacher", DQ, [(_gap("heldout_new_voices"), ".2f")]),
    (BENCH, "**Real recordings:** {} points above the teacher", DQ, [(_gap("real"), ".2f")]),
    (BENCH, "**Speed:** {}× the teacher", DQ, [(at("goals", "speedup", "value"), ".2f")]),
    (BENCH, "the student is {} points above the teacher on the voice", DQ, [(_gap("heldout_seen_voice"), ".2f")]),
    (BENCH, "falls from {} to {} nats per token on real speech", DQ, [
        (_curve(0, "real"), ".1f"), (_curve(600, "real"), ".2f")]),
    (BENCH, "and from {} to {} on the new voices", DQ, [
        (_curve(0, "heldout_new_voices"), ".1f"), (_curve(600, "heldout_new_voices"), ".2f")]),
    (BENCH, "({} at step 240, {} at 600)", DQ, [
        (_curve(240, "heldout_new_voices"), ".2f"), (_curve(600, "heldout_new_voices"), ".2f")]),
    (BENCH, "on\n2026-12-07, 2 CPU cores (Intel Xeon; load average {} at the start, {} at the end;", DQ15, [
        (at("machine", "load_avg_1m_start"), ".1f"), (at("machine", "load_avg_1m_end"), ".1f")]),
    (BENCH, "It scores {} % WER against the text, and {} rows ({} h)\n  remain under 20 %.", DQ15, [
        (at("labelled", "wer_all_labelled"), ".2f"), (at("labelled", "rows_written"), "d"),
        (at("labelled", "audio_hours_written"), ".2f")]),
    (BENCH, "- **Training:** {} steps of {} rows (packs half as long", DQ15, [
        (at("config", "max_steps"), "d"), (at("config", "batch_size"), "d")]),
    (BENCH, "about 20 epochs, as above), in {}\n  minutes.", DQ15, [(scaled(at("times_s", "train"), 1 / 60), ".1f")]),
    (BENCH, "| teacher (tiny.en, 30 s) | {} | {} | {} | {} |", DQ15, _quality_row("teacher")),
    (BENCH, "| teacher, encoder cut to 15 s (untrained) | {} | {} | {} | {} |", DQ15, _quality_row("teacher_window")),
    (BENCH, "| student, fresh from the cut | {} | {} | {} | {} |", DQ15, _quality_row("student_fresh")),
    (BENCH, "| student, after 1200 steps | {} | {} | {} | {} |", DQ15, _quality_row("student_trained")),
    (BENCH, "- **New voices:** {} points above the teacher, interval {} to {} (goal", DQ15, [
        (at("goals", "heldout_new_voices_wer_gap", "value"), ".2f"),
        (at("goals", "heldout_new_voices_wer_gap", "interval_95", 0), ".2f"),
        (at("goals", "heldout_new_voices_wer_gap", "interval_95", 1), ".2f")]),
    (BENCH, "- **Real recordings:** {} points above the teacher, interval {} to {} (goal", DQ15, [
        (at("goals", "real_wer_gap", "value"), ".2f"), (at("goals", "real_wer_gap", "interval_95", 0), ".2f"),
        (at("goals", "real_wer_gap", "interval_95", 1), ".2f")]),
    (BENCH, "- **Speed:** {}× the teacher at batch 1 (goal ≥ 2×", DQ15, [(at("goals", "speedup", "value"), ".2f")]),
    (BENCH, "new voices better, at {}× the\n  teacher's speed.", DQ15, [
        (_ratio(at(*WINDOW_SPEED), at("models", "teacher", "heldout_audio_s_per_s")), ".2f")]),
    (BENCH, "is {} nats\n  per token at the end ({} at step 120), against {} on the new voices.", DQ15, [
        (_curve(1200, "real"), ".2f"), (_curve(120, "real"), ".2f"), (_curve(1200, "heldout_new_voices"), ".2f")]),
    (README, "A 15 s student (`--max_source_positions 750`, {} steps in {} minutes): {} points above the teacher on "
     "held-out voices (goal ≤ 3: met; 95 % interval {} to {}), {} on the real recordings (goal ≤ 5: missed), {}× the "
     "teacher's speed at batch 1", DQ15, [
        (at("config", "max_steps"), "d"), (scaled(at("times_s", "train"), 1 / 60), ".0f"),
        (at("goals", "heldout_new_voices_wer_gap", "value"), ".2f"),
        (at("goals", "heldout_new_voices_wer_gap", "interval_95", 0), ".2f"),
        (at("goals", "heldout_new_voices_wer_gap", "interval_95", 1), ".2f"),
        (at("goals", "real_wer_gap", "value"), ".2f"), (at("goals", "speedup", "value"), ".2f")]),
    (README, "a 2-layer 15 s student is {}×", DQ15, [(at("goals", "speedup", "value"), ".2f")]),
    *[_speed_row(i) for i in range(12)],
    (BENCH, "({} for tiny.en, {} for base: end-of-text", SS, [_ss(0, "tokens", "d"), _ss(6, "tokens", "d")]),
    (BENCH, "`python -m benchmarks.student_speed` on 2026-12-07, 2 CPU cores (Intel Xeon; load average {} at the "
     "start)", SS, [(at("machine", "load_avg_1m_start"), ".1f")]),
    (BENCH, "two thirds of tiny.en's ({} of {} ms) and four\n  fifths of base's ({} of {} ms)", SS, [
        _ss(0, "fixed_ms", ".0f"), _ss(0, "ms_per_clip", ".0f"),
        _ss(6, "fixed_ms", ".0f"), _ss(6, "ms_per_clip", ".0f")]),
    (BENCH, "takes tiny.en's from {} to {} ms", SS, [_ss(0, "fixed_ms", ".0f"), _ss(3, "fixed_ms", ".0f")]),
    (BENCH, "2 layers alone give {}×, the 15 s window\n  alone {}×, both {}×. Base is the same shape: {}×, {}×, {}×.",
     SS, [_ss(i, "speedup", ".2f") for i in (1, 3, 4, 7, 9, 10)]),
    (BENCH, "at the teacher's token count the cut itself is {}×. A 1-layer decoder at 15 s is {}× (tiny.en)\n  and {}× "
     "(base)", SS, [_ss(4, "speedup", ".2f"), _ss(5, "speedup", ".2f"), _ss(11, "speedup", ".2f")]),
    (BENCH, "({} against {} at 30 s; {} against {} at 15 s;", SS, [
        _ss(6, "per_token_ms", ".1f"), _ss(8, "per_token_ms", ".1f"), _ss(9, "per_token_ms", ".1f"),
        _ss(11, "per_token_ms", ".1f")]),
    (BENCH, "The 15 s 2-layer student of the run above measured {}× end to end", DQ15, [
        (at("goals", "speedup", "value"), ".2f")]),
    (BENCH, "| {} | {} h, {} rows | {} ({} to {}) | {} ({} to {}) | {} |", DS, _scaling_row(0)),
    (BENCH, "Its {} steps of {} rows went\n  through its {} rows {} times", DS, [
        (at("recipe", "max_steps"), "d"), (at("recipe", "batch_size"), "d"),
        (at("points", 0, "labelled", "rows_written"), "d"),
        (lambda d: d["recipe"]["max_steps"] * d["recipe"]["batch_size"] / d["points"][0]["labelled"]["rows_written"],
         ".0f")]),
    *[(BENCH, "| {} | {} h, {} rows | {} ({} to {}) | {} ({} to {}) | {} |", DS, _scaling_row(i)) for i in (1, 2, 3)],
    *[(BENCH, "| {} | {} | {} | {} | {}× | {} % | {} | {} of {} |", SPD, _draft_row(i)) for i in range(3)],
    *[(BENCH, f"| {lang} | {{}} | {{}} | {{}} | {{}}× | {{}} % | {{}} | {{}} |", SPM, [
        (at("rows", i, "items"), "d"), (at("rows", i, "teacher_speed"), ".2f"),
        (at("rows", i, "speculative_speed"), ".2f"),
        (at("rows", i, "speedup"), ".2f"), (scaled(at("rows", i, "acceptance"), 100), ".1f"),
        (at("rows", i, "teacher_passes"), "d"), (at("rows", i, "rows_differing"), "d")])
      for i, lang in enumerate(("es", "fr", "it", "ru"))],
    (README, "drafting on its held-out prompts: {}–{} % accepted, {}–{}× the teacher", SPM, [
        (lambda d: 100 * min(r["acceptance"] for r in d["rows"]), ".0f"),
        (lambda d: 100 * max(r["acceptance"] for r in d["rows"]), ".0f"),
        (lambda d: min(r["speedup"] for r in d["rows"]), ".2f"),
        (lambda d: max(r["speedup"] for r in d["rows"]), ".2f")]),
    (README, "on an AMD EPYC machine: transcribe {} s warm against {} s off (compiling {} s instead of {} s), "
     "`run_eval.py` {} s against {} s (`benchmarks/results/warm_start_amd_epyc.json`, load average {} at the "
     "start)", WSA, [
        _warm("transcribe", "warm"), _warm("transcribe", "off"), _warm("transcribe", "warm", "compile_seconds"),
        _warm("transcribe", "off", "compile_seconds"), _warm("run_eval.py", "warm"), _warm("run_eval.py", "off"),
        (at("machine", "load_avg_1m_start"), ".1f")]),
    (BENCH, "speculative_multilingual.json`\non 2026-12-07 (AMD EPYC, load average {} at the start)", SPM, [
        (at("machine", "load_avg_1m_start"), ".1f")]),
    *[(BENCH, f"| {name}, {{}} prompts, {{}} words | {{}} % | {{}} % | {{}} [{{}}, {{}}] |", ML, _ml_student_row(lang))
      for lang, name in (("fr", "French"), ("es", "Spanish"), ("it", "Italian"), ("ru", "Russian"))],
    (BENCH, "AMD EPYC, 2 cores,\n{} minutes; `benchmarks/results/multilingual_student.json`): a 2-layer, {} s student "
     "of whisper-base, {} steps of\n{}.", ML, [(scaled(at("times_s", "total"), 1 / 60), ".0f"),
                                               (scaled(at("config", "max_source_positions"), 1 / 50), ".0f"),
                                               (at("config", "max_steps"), "d"), (at("config", "batch_size"), "d")]),
    (BENCH, "the teacher's WER filter ({} %) keeps {} packs, {} h of speech", ML, [
        (at("config", "wer_threshold"), ".0f"), (at("data", "labelled", "rows_written"), "d"),
        (at("data", "labelled", "audio_hours_written"), ".2f")]),
    (BENCH, "at {}× the teacher's speed at batch 1 ({} against {} audio\n  seconds per second", ML, [
        (at("speedup"), ".2f"), (at("models", "student_trained", "heldout_audio_s_per_s"), ".2f"),
        (at("models", "teacher", "heldout_audio_s_per_s"), ".2f")]),
    (README, "0.74 h of Debian's French, Spanish, Italian and Russian prompts, one speaker each): {} points above the "
     "teacher on held-out Spanish prompts, {} on French, {} on Italian, {} on Russian, at {}× the teacher's speed",
     ML, [*[(at("gaps", f"heldout_{k}", "value"), ".2f") for k in ("es", "fr", "it", "ru")], (at("speedup"), ".2f")]),
    (README, "a 2-layer, 15 s student of whisper-base, {} h of Debian's", ML, [
        (at("data", "labelled", "audio_hours_written"), ".2f")]),
    (BENCH, "load\n  average {} at the end", ML, [(at("machine", "load_avg_1m_end"), ".1f")]),
    *[(BENCH, f"| {lang} | {{}} | {{}} | {{}} | {{}} | {{}}× | {{}} % | {{}} | {{}} |", SPM30, _spm30_row(i))
      for i, lang in enumerate(("es", "es", "fr", "fr", "it", "it", "ru", "ru"))],
    *[(BENCH, f"| {rec} | {{}} | {{}} | {{}}× | {{}}× |", LFV, _lfv_row(rec)) for rec in LF_RECORDINGS],
    (BENCH, "longform_vad_fixes.json` on\n2026-12-08 (AMD EPYC, load average {} at the start), {} minutes", LFV, [
        (at("machine", "load_avg_1m_start"), ".1f"), (scaled(at("total_s"), 1 / 60), ".0f")]),
    (BENCH, "**WER at or below faster-whisper's batched pipeline on {} of the 6 recordings**", LFV, [
        (lambda d: sum(v["vad_wer"] <= v["fw_batched_wer"] for v in d["summary"]["recordings"].values()), "d")]),
    (BENCH, "Over all six, vad runs at {}× decode-only and {}× whole process.\n  **The goal is still met on {}.**",
     LFV, [
        (at("summary", "pooled", "ours-vad", "decode_vs_fw_batched"), ".2f"),
        (at("summary", "pooled", "ours-vad", "whole_process_vs_fw_batched"), ".2f"),
        (lambda d: "none" if d["summary"]["goal_met_on"] == 0 else d["summary"]["goal_met_on"], "")]),
    (README, "vad's WER at or below faster-whisper's on {} of 6 recordings (Italian 69.55 % → {} %, Spanish 23.77 % → "
     "{} %), at {}× its speed decode-only and {}× whole process", LFV, [
        (lambda d: sum(v["vad_wer"] <= v["fw_batched_wer"] for v in d["summary"]["recordings"].values()), "d"),
        (at("summary", "recordings", "it", "vad_wer"), ".2f"), (at("summary", "recordings", "es", "vad_wer"), ".2f"),
        (at("summary", "pooled", "ours-vad", "decode_vs_fw_batched"), ".2f"),
        (at("summary", "pooled", "ours-vad", "whole_process_vs_fw_batched"), ".2f")]),
    (LONGFORM, "Italian\n  fell to {} % and Spanish from 23.77 % to {} %: vad's WER is at or below faster-whisper's "
     "on {} of the 6",
     LFV, [(at("summary", "recordings", "it", "vad_wer"), ".2f"), (at("summary", "recordings", "es", "vad_wer"), ".2f"),
           (lambda d: sum(v["vad_wer"] <= v["fw_batched_wer"] for v in d["summary"]["recordings"].values()), "d")]),
    (README, "a 30 s student of the same data (`--pack_seconds 15`) lands within those intervals ({}, {}, {}, {}) at "
     "{}×", ML30, [*[(at("gaps", f"heldout_{k}", "value"), ".2f") for k in ("es", "fr", "it", "ru")],
                   (at("speedup"), ".2f")]),
    (README, "which shares the teacher's encoder: {}–{} % accepted, {}–{}× the teacher ({}–{}× with an 8,192-token "
     "shortlist", SPM30, [
        (lambda d: 100 * min(r["acceptance"] for r in d["rows"] if not r["draft_vocab"]), ".0f"),
        (lambda d: 100 * max(r["acceptance"] for r in d["rows"] if not r["draft_vocab"]), ".0f"),
        *[(lambda d, f=f, v=v: f(r["speedup"] for r in d["rows"] if bool(r["draft_vocab"]) == v), ".2f")
          for v in (False, True) for f in (min, max)]]),
    (BENCH, "speculative_multilingual_30s.json` on 2026-12-08 (AMD EPYC, load average {} at the start)", SPM30, [
        (at("machine", "load_avg_1m_start"), ".1f")]),
    *[(BENCH, f"| {name} | {{}} % | {{}} % | {{}} [{{}}, {{}}] | {{}} |", ML30, _ml30_row(lang))
      for lang, name in (("fr", "French"), ("es", "Spanish"), ("it", "Italian"), ("ru", "Russian"))],
    (BENCH, "(AMD EPYC, 2 cores, {} minutes, other work\non the machine during most of the training, load average {} "
     "at the end)", ML30, [(scaled(at("times_s", "total"), 1 / 60), ".0f"), (at("machine", "load_avg_1m_end"), ".1f")]),
    (BENCH, "({} packs, {} h)", ML30, [(at("data", "labelled", "rows_written"), "d"),
                                      (at("data", "labelled", "audio_hours_written"), ".2f")]),
    (BENCH, "Speed at batch 1: {}× the teacher ({} against {} audio seconds per second), against {}× for the 15 s",
     ML30, [(at("speedup"), ".2f"), (at("models", "student_trained", "heldout_audio_s_per_s"), ".2f"),
            (at("models", "teacher", "heldout_audio_s_per_s"), ".2f"), (in_other(ML, at("speedup")), ".2f")]),
    (BENCH, "{} passes over it", ML, [(lambda d: d["config"]["max_steps"] * d["config"]["batch_size"]
                                       / d["data"]["labelled"]["rows_written"], ".0f")]),
    (BENCH, "**New voices: the gap falls {} ± {} points per doubling of the hours**", DS, [
        (lambda d: -d["fit"]["gap"]["heldout_new_voices"]["per_doubling"], ".2f"),
        (at("fit", "gap", "heldout_new_voices", "per_doubling_se"), ".2f")]),
    (BENCH, "the line crosses the 3-point goal at {} h", DS, [
        (at("fit", "gap", "heldout_new_voices", "hours_to_goal"), ".1f")]),
    (BENCH, "falls as a power law, {} · hours^{}**", DS, [
        (at("fit", "ce", "at_1h"), ".2f"), (at("fit", "ce", "exponent"), ".2f")]),
    (BENCH, "the fitted slope, {} ± {} per\n  doubling", DS, [
        (at("fit", "gap", "real", "per_doubling"), ".2f"), (at("fit", "gap", "real", "per_doubling_se"), ".2f")]),
    (README, "tiny.en cut to 15 s is {}× alone, {}× with 2 decoder layers", SS, [
        _ss(3, "speedup", ".2f"), _ss(4, "speedup", ".2f")]),
    (README, "the acceptance fell from {} % to {} % and the run stayed at {}× the teacher", SPD, [
        (lambda d: 100 * d["rows"][0]["acceptance"], ".0f"), (lambda d: 100 * d["rows"][2]["acceptance"], ".0f"),
        (at("rows", 2, "speedup"), ".2f")]),
    (README, "the gap on held-out voices falls {} points per doubling of the speech and reaches the 3-point goal at "
     "about {} h", DS, [(lambda d: -d["fit"]["gap"]["heldout_new_voices"]["per_doubling"], ".2f"),
                        (at("fit", "gap", "heldout_new_voices", "hours_to_goal"), ".1f")]),
    (README, "on the real recordings it stays {} to {} points with no trend", DS, [
        (lambda d: min(p["gap"]["real"]["value"] for p in d["points"]), ".0f"),
        (lambda d: max(p["gap"]["real"]["value"] for p in d["points"]), ".0f")]),
    (README, "learns language identification ({} → {} on held-out clips", DM, [
        (at("results", "overall", "language_id_accuracy", m), ".2f")
        for m in ("student_untrained", "student_trained")]),
    (README, "the 2-layer tiny.en student ends {} points above its teacher on held-out voices, {} on {} s of real "
     "recordings, at {}× its speed", DQ, [(_gap("heldout_new_voices"), ".2f"), (_gap("real"), ".2f"),
                                          (at("real_audio_s"), ".1f"), (at("goals", "speedup", "value"), ".2f")]),
    (README, "{} h of generated English speech, {} steps in {} minutes of CPU", DQ, [
        (scaled(at("corpus", "seconds", "train"), 1 / 3600), ".1f"), (at("config", "max_steps"), "d"),
        (scaled(at("times_s", "train"), 1 / 60), ".0f")]),
    (BENCH, "The recorded {} steps took {} minutes on a shared machine (load average {} at the start); at that rate "
     "the default `--max_steps 1000` takes about {} hours", DQ, [
        (at("config", "max_steps"), "d"), (scaled(at("times_s", "train"), 1 / 60), ".0f"),
        (at("machine", "load_avg_1m_start"), ".1f"),
        (lambda d: d["times_s"]["train"] * 1000 / d["config"]["max_steps"] / 3600, ".1f")]),
    (README, "bundled clips in a fresh process took {} s instead of {} s with the cache off (compiling {} s instead "
     "of {} s), `run_eval.py` on {} held-out clips {} s instead of {} s", WS, [
        _warm("transcribe", "warm"), _warm("transcribe", "off"), _warm("transcribe", "warm", "compile_seconds"),
        _warm("transcribe", "off", "compile_seconds"), (at("rows"), "d"), _warm("run_eval.py", "warm"),
        _warm("run_eval.py", "off")]),
    (README, "took {} minutes for {} tests on 2 CPU cores (load average {} at the start)", SUITE, [
        (scaled(at("wall_seconds"), 1 / 60), ".0f"), (lambda d: sum(d["outcomes"].values()), "d"),
        (at("load_average_start", 0), ".1f")]),
    (README, "(load average {} at the start); {} passed.", SUITE, [
        (at("load_average_start", 0), ".1f"), (at("outcomes", "passed"), "d")]),
    (README, "process peaked at {} GiB resident, {} GiB of it from one test", SUITE, [
        (scaled(at("pytest_peak_mib"), 1 / 1024), ".1f"), (_largest_step_gib, ".1f")]),
    (README, "The last slow run (`benchmarks/results/slow_suite.json`,\n{}, on a machine also running other work: load "
     "average {} at the start, {} at the end): {} passed in {}\nminutes; its pytest process peaked at {} GiB", SLOW, [
        (lambda d: d["date"][:10], "s"), (at("load_average_start", 0), ".1f"), (at("load_average_end", 0), ".1f"),
        (at("outcomes", "passed"), "d"), (scaled(at("wall_seconds"), 1 / 60), ".0f"),
        (scaled(at("pytest_peak_mib"), 1 / 1024), ".1f")]),
    (README, "process tree (pytest and the processes it started, proportional set sizes summed) at {} GiB", SUITE, [
        (scaled(at("peak_memory_mib"), 1 / 1024), ".1f")]),
    (BENCH, "The recorded one reused {}, so its JSON times them near zero", DQ, [
        (lambda d: {(True, True): "both", (True, False): "the corpus", (False, True): "the labels"}.get(
            (d["reused"]["corpus"], d["reused"]["labels"]), "neither"), "s")]),
    (BENCH, "holds a run of 2026-12-07 on an Intel Xeon machine with\nload average {} at the start", DD, [
        (at("machine", "load_avg_1m_start"), ".1f")]),
    (BENCH, "did not record the load average before it started; {} at its end", T, [
        (at("machine", "loadavg_at_end", 0), ".1f")]),
    (BENCH, "did not record the load average before it started, {} at its end; raw numbers: "
     "`benchmarks/results/train_step.json`", TS, [(at("machine", "loadavg_at_end", 0), ".1f")]),
    (BENCH, "did not record the load average before it started, {} at its end; raw numbers: "
     "`benchmarks/results/export.json`", EX, [(lambda d: float(d["load_average"][0]), ".1f")]),
]  # fmt: skip

# "idle" is a claim about the machine: it stands only beside the load average recorded before the run started, and
# only where that was below IDLE_LOAD (1-minute load on the 2-core machine: under half a core of other work).
IDLE_LOAD = 0.5
IDLE_CLAIMS: list[tuple[str, str, str, Getter]] = [
    (README, "on an idle machine (load average {} at the start", PL, at("load_average_at_start", 0)),
    (BENCH, "idle machine (AMD EPYC, 2 cores, load average {} at the start", PL, at("load_average_at_start", 0)),
]


@pytest.mark.parametrize("doc,template,results,load", IDLE_CLAIMS, ids=[f"{d}:{t[:30]}" for d, t, _, _ in IDLE_CLAIMS])
def test_idle_claims_quote_a_low_starting_load(doc, template, results, load):
    value = load(json.loads((RESULTS / results).read_text(encoding="utf-8")))
    assert value < IDLE_LOAD, f"benchmarks/results/{results} started at load {value:.2f}: not an idle machine"
    expected = flat(template.format(format(value, ".1f")))
    assert expected in flat((REPO / doc).read_text(encoding="utf-8")), f"{doc} must say {expected!r}"


def test_every_idle_claim_is_checked():
    """A sentence that calls a machine idle must be one of IDLE_CLAIMS (quoting the recorded starting load)."""
    for doc in {README, BENCH, *[str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")]}:
        said = len(re.findall(r"\bidle (?:2-core )?machine", flat((REPO / doc).read_text(encoding="utf-8"))))
        checked = sum(1 for d, *_ in IDLE_CLAIMS if d == doc)
        assert said == checked, f"{doc}: {said} sentences call the machine idle, {checked} are in IDLE_CLAIMS"


def flat(text: str) -> str:
    """Whitespace runs (line breaks included) as one space, so a quote may wrap anywhere."""
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(
    "doc,template,results,values",
    QUOTES,
    ids=[f"{doc}:{template[:40]}" for doc, template, _, _ in QUOTES],
)
def test_quoted_figure_is_the_committed_one(doc, template, results, values):
    data = json.loads((RESULTS / results).read_text(encoding="utf-8"))
    try:
        figures = [format(get(data), fmt) for get, fmt in values]
    except (KeyError, IndexError, TypeError) as e:
        names = ", ".join(get.__name__ for get, _ in values)
        pytest.fail(f"benchmarks/results/{results} has no {e} ({names}): re-run its benchmark")
    expected = flat(template.format(*figures))
    text = flat((REPO / doc).read_text(encoding="utf-8"))
    assert expected in text, (
        f"{doc} must quote {expected!r} (from benchmarks/results/{results}: "
        f"{', '.join(get.__name__ for get, _ in values)})"
    )


def test_readme_commands_are_what_ci_runs():
    readme = (REPO / README).read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, block
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in block:
        assert command in ci, f".ci/run does not run README's command {command!r}"
    # the second command must work in a new shell, where only the first activated the venv
    assert all(part.strip().startswith(".venv/bin/") for part in block[1].split("&&")), block[1]


CITATION = re.compile(r"formats\.md|upstream\.md|style\.md|contract [A-D]\b|Gotcha|issues? [0-9]")


def test_docs_cite_nothing_outside_the_repository():
    files = [REPO / README, *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "benchmarks").rglob("*.md"))]
    files += sorted((REPO / "distil_whisper_jax" / "assets").rglob("*.md"))
    bad = [
        f"{f.relative_to(REPO)}:{n}: {line.strip()}"
        for f in files
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if CITATION.search(line)
    ]
    assert not bad, "explain it in docs/ instead of citing it:\n" + "\n".join(bad)


def test_bundled_corpus_sizes_quoted_are_the_manifests():
    """README's sizes of the bundled corpus and the demo's held-out set are counted from what ships."""
    from distil_whisper_jax.assets import speech_manifest
    from distil_whisper_jax.stages.demo.demo import DemoConfig

    from .helpers import read_tsv

    train, heldout = read_tsv(speech_manifest("train")), read_tsv(speech_manifest("heldout"))
    speakers = sorted({r["speaker_id"] for r in heldout})
    rows = DemoConfig().eval_rows
    expected = [
        f"training speech ({len(train)} utterances",
        f"scored on {rows} held-out sentences ({rows // len(speakers)} from each of the {len(speakers)} speakers)",
    ]
    text = flat((REPO / README).read_text(encoding="utf-8"))
    for quote in expected:
        assert quote in text, f"README must say {quote!r} (counted from the bundled manifests and the demo's flags)"
    table = flat((REPO / SPEECH).read_text(encoding="utf-8"))
    assert (
        f"| train | `train.tsv` | {len(train)} |" in table and f"| held-out | `heldout.tsv` | {len(heldout)} |" in table
    )
