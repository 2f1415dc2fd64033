"""Evaluate a Whisper model (optionally with an assistant for speculative decoding) on speech datasets.

    run_eval.py --model_name_or_path M --dataset_name A[+B...] --audio_column_name audio \\
        --text_column_name text --output_dir R [--long_form chunked] [--predictions_csv]

Every ``+``-joined dataset is opened by ``data`` (manifests, Parquet, saved datasets, audio folders, hub ids)
and read as a forward stream in blocks of rows; a block's audio is decoded only while it is transcribed, so
memory does not grow with the dataset. The rows go through ``transcribe``'s decoder path (one compiled
program, the global batch split over the local devices; ``--long_form chunked`` for recordings longer than the
model's input). Multi-host: block ``b`` of a dataset belongs to process ``b % process_count`` (the split of
labelling, ``data_blocks``); each process writes its rows to ``R/.parts/process_K.jsonl`` and process 0 merges
them. Scores and files: ``report``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from distil_whisper_jax.data import blocks as data_blocks
from distil_whisper_jax.data import row_language as languages_of
from distil_whisper_jax.data import sources as data
from distil_whisper_jax.data.stream import load_row_audio
from distil_whisper_jax.decode import transcribe
from distil_whisper_jax.decode.decoding import Decoder, check_assistant_mode, decoder, set_language
from distil_whisper_jax.infra import compile_cache, config, multihost, storage
from distil_whisper_jax.infra.compile_cache import CompileCacheFlags
from distil_whisper_jax.infra.files import check_writable
from distil_whisper_jax.infra.flag_groups import DecodingFlags, GenerationDeviceFlags, HubDatasetFlags
from distil_whisper_jax.infra.multihost import MultiHostConfig
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import special_tokens
from distil_whisper_jax.speech.wer import normalizer_for
from distil_whisper_jax.stages.evaluate import report
from distil_whisper_jax.weights.loading import load_pretrained

log = logging.getLogger(__name__)
DATA, MODEL, OUTPUT = "data", "model and generation", "output"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(MultiHostConfig, HubDatasetFlags, GenerationDeviceFlags, DecodingFlags, CompileCacheFlags):
    """An evaluation run: which model (and assistant), which datasets, how to decode, where results go."""

    model_name_or_path: str | None = config.flag(
        None, "model to evaluate; default: the bundled tiny.en", group=MODEL, aliases=("model",)
    )
    assistant_model_name_or_path: str | None = config.flag(
        None, "speculative decoding: a smaller model with the same tokenizer drafts tokens (greedy only)", group=MODEL
    )
    dataset_name: str = config.flag(
        help="'+'-joined: manifest (.tsv/.csv/.jsonl), Parquet dir/file/glob, save_to_disk dir, audiofolder:DIR, "
        "or 🤗 hub id; each is scored separately and overall",
        group=DATA,
    )
    audio_column_name: str | None = config.flag(
        None, "audio column (default: the one a labelled dataset records, else 'audio')", group=DATA
    )
    text_column_name: str | None = config.flag(
        None, "reference transcript column (default: the recorded ground truth, else 'text')", group=DATA
    )
    max_samples: int | None = config.flag(
        None, "evaluate only the first N rows of each dataset", group=DATA, aliases=("--max_eval_samples",)
    )
    dtype: Literal["float32", "bfloat16"] = config.flag("float32", "compute dtype of generation", group=MODEL)
    language: str | None = config.flag(
        None,
        "language of the data (a Whisper code; '+'-joined: one per dataset): the prompt of multilingual models "
        "and the WER normaliser",
        group=MODEL,
    )
    language_column_name: str | None = config.flag(
        None, "column of each row's language (Whisper codes); results per language too", group=DATA
    )
    task: Literal["transcribe", "translate"] = config.flag("transcribe", "decoder task token", group=MODEL)
    output_dir: str = config.flag(help="where results.json, results.md (and predictions.csv) go", group=OUTPUT)
    predictions_csv: bool = config.flag(False, "also write every row's reference and prediction", group=OUTPUT)

    def validate(self) -> None:
        """``ValueError`` naming the flag for a value that cannot work (before any work starts)."""
        for name in ("per_device_eval_batch_size", "num_local_devices", "max_samples", "num_assistant_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {value}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.assistant_vocab_size < 0:
            raise ValueError(f"--assistant_vocab_size must be ≥ 0, got {self.assistant_vocab_size}")
        if self.num_beams < 1:
            raise ValueError(f"--num_beams must be ≥ 1, got {self.num_beams}")
        transcribe.check_long_form(self.long_form, self.chunk_length_s, self.num_beams)
        check_assistant_mode(self.assistant_model_name_or_path, self.long_form, self.num_beams, ASSISTANT_FLAG)
        if not storage.is_url(self.output_dir) and Path(self.output_dir).is_file():
            raise ValueError(f"--output_dir {self.output_dir}: is a file; give a directory")
        check_writable(self.output_dir, "--output_dir")


ASSISTANT_FLAG = "--assistant_model_name_or_path"
RUN_ONLY = (*multihost.FIELDS, *compile_cache.FIELDS, "output_dir", "predictions_csv")


@dataclasses.dataclass
class Setup:
    """What the row loop needs, resolved from the config once (every configuration error raised before)."""

    cfg: EvalConfig
    sources: list[data.Source]
    names: list[str]  # one per dataset, unique
    columns: list[tuple[str, str]]  # (audio, text) column per dataset
    dec: Decoder
    block_rows: int  # rows per block of the per-process split (a few batches)
    languages: list[str | None]  # each dataset's --language
    load_seconds: float = 0.0  # loading the model(s)


def dataset_names(sources: list[data.Source]) -> list[str]:
    """The datasets' labels, a repeated one suffixed ``#2``, ``#3``, ... (results are keyed by name)."""
    names: list[str] = []
    for s in sources:
        name, n = s.label, 2
        while name in names:
            name, n = f"{s.label}#{n}", n + 1
        names.append(name)
    return names


def open_data(cfg: EvalConfig) -> tuple[list[data.Source], list[tuple[str, str]]]:
    """The datasets and their (audio, text) columns; ``DataConfigError`` for a missing column, before work."""
    specs = data.parse_sources(cfg.dataset_name, cfg.dataset_config_name, cfg.dataset_split_name)
    sources = data.open_sources(specs, cfg.streaming, cfg.dataset_cache_dir)
    columns = []
    for src in sources:
        audio_col = src.column_for("audio", cfg.audio_column_name, "audio")
        text_col = src.column_for("text", cfg.text_column_name, "text")
        data.require_columns(
            src,
            {
                "audio_column_name": audio_col,
                "text_column_name": text_col,
                "language_column_name": cfg.language_column_name,
            },
            " for evaluation (the audio and its reference transcript)",
        )
        columns.append((audio_col, text_col))
    return sources, columns


def setup(cfg: EvalConfig) -> Setup:
    """Validate, open the data, load the model(s) and build the decoder."""
    cfg.validate()
    sources, columns = open_data(cfg)
    devices = jax.local_devices()
    if cfg.num_local_devices is not None:
        if cfg.num_local_devices > len(devices):
            raise ValueError(f"--num_local_devices {cfg.num_local_devices}: only {len(devices)} available")
        devices = devices[: cfg.num_local_devices]
    started = time.perf_counter()
    pre = load_pretrained(cfg.model_name_or_path, "--model_name_or_path")
    languages = languages_of.per_source(cfg.language, len(sources))
    model = f"the model {pre.source}"
    languages_of.check_model(special_tokens(pre.tokenizer), languages, cfg.language_column_name, model)
    assistant = None
    if cfg.assistant_model_name_or_path is not None:
        assistant = load_pretrained(cfg.assistant_model_name_or_path, "--assistant_model_name_or_path")
    loaded = time.perf_counter() - started
    dec = decoder(
        pre,
        cfg.per_device_eval_batch_size * (1 if assistant is not None else len(devices)),  # speculative: 1 device
        cfg.dtype,
        cfg.num_beams,
        cfg.long_form != "none",
        languages[0],
        cfg.task,
        cfg.max_new_tokens,
        devices,
        assistant,
        cfg.num_assistant_tokens,
        ASSISTANT_FLAG,
        assistant_vocab_size=cfg.assistant_vocab_size,
    )
    return Setup(cfg, sources, dataset_names(sources), columns, dec, 4 * dec.batch_size, languages, loaded)


def _block_entries(s: Setup, k: int, rows: list[tuple[int, int, dict]], on_done: Callable[[int], None]) -> list[dict]:
    """Transcribe one block of dataset ``k``'s rows; one entry per row (see ``report``)."""
    src, (audio_col, text_col) = s.sources[k], s.columns[k]
    names = [f"{s.names[k]} row {gi}" for gi, _, _ in rows]
    seconds = [0.0] * len(rows)

    def load(i: int) -> np.ndarray:
        row = rows[i][2]
        if "__error__" in row:
            raise audio.AudioError(f"{names[i]}: {row['__error__']}")
        wav = load_row_audio(row.get(audio_col), src, names[i])
        seconds[i] = len(wav) / audio.SAMPLE_RATE
        return wav

    langs = _row_languages(s, k, [row for _, _, row in rows])
    results: list[dict] = [{}] * len(rows)
    for lang in dict.fromkeys(lang for lang in langs if not isinstance(lang, ValueError)):
        group = [i for i, x in enumerate(langs) if x == lang]  # one language at a time: its prompt token
        set_language(s.dec, lang)
        done = transcribe.transcribe_loaded(
            [names[i] for i in group],
            lambda j, group=group: load(group[j]),
            s.dec,
            s.cfg.long_form,
            s.cfg.chunk_length_s,
            on_done=lambda i: on_done(1),
        )
        for i, r in zip(group, done):
            results[i] = r
    entries = []
    for (gi, _, row), r, sec, lang in zip(rows, results, seconds, langs):
        ref = row.get(text_col)
        bad = isinstance(lang, ValueError)
        entries.append(
            {
                "dataset": k,
                "row": gi,
                "id": row.get("id", ""),
                "reference": "" if ref is None else str(ref),
                "prediction": None if bad else r.get("text"),
                "error": f"{s.names[k]} row {gi}: {lang}" if bad else r.get("error"),
                "audio_seconds": sec if "text" in r else 0.0,
                **({"language": None if bad else lang} if s.cfg.language or s.cfg.language_column_name else {}),
            }
        )
    return entries


def _row_languages(s: Setup, k: int, rows: list[dict]) -> list:
    """Each row's language code (its column, else its dataset's --language, else English), or the
    ``ValueError`` that names a language the model does not know (that row is counted as unreadable)."""
    specials = special_tokens(s.dec.pre.tokenizer)
    out = []
    for row in rows:
        try:
            out.append(languages_of.row_language(row, s.cfg.language_column_name, s.languages[k] or "en", specials))
        except ValueError as e:
            out.append(e)
    return out


def evaluate_process(s: Setup, process_index: int = 0, process_count: int = 1) -> tuple[list[dict], list[float]]:
    """This process's share of every dataset: its entries and the seconds spent per dataset."""
    entries, seconds = [], []
    for k, src in enumerate(s.sources):
        total, limit = src.num_rows, s.cfg.max_samples
        if limit is not None:
            total = limit if total is None else min(total, limit)
        bar = tqdm(
            total=None if total is None else math.ceil(total / process_count),
            unit="row",
            desc=f"eval {s.names[k]}" + (f" p{process_index}" if process_count > 1 else ""),
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        blocks = data_blocks.owned_blocks([src], s.block_rows, process_index, process_count, limit=s.cfg.max_samples)
        for _, rows in blocks:
            entries += _block_entries(s, k, list(rows), bar.update)
        seconds.append(time.perf_counter() - t0)
        bar.close()
    return entries, seconds


def assistant_counts(dec: Decoder) -> dict | None:
    if dec.assistant is None:
        return None
    return {"drafted_tokens": dec.drafted, "accepted_tokens": dec.accepted, "verification_passes": dec.passes}


def run_key(cfg: EvalConfig) -> dict:
    """The settings every process of one run shares (a part of another run is not merged)."""
    return {k: v for k, v in config.to_dict(cfg).items() if k not in RUN_ONLY}


def results_of(
    s: Setup, entries: list[dict], seconds: list[float], assistant: dict | None, timings: dict
) -> tuple[dict, list]:
    """``results.json``'s content and the scored rows (``timings``: process 0's load and compile figures)."""
    cfg = s.cfg
    results, rows = report.score(entries, s.names, seconds, normalizer_for(s.languages[0]), normalizer_for)
    results["model"] = s.dec.pre.source
    if assistant is not None:
        drafted = assistant["drafted_tokens"]
        results["assistant"] = {
            "model": s.dec.assistant.source,
            "num_assistant_tokens": s.dec.num_assistant_tokens,
            "assistant_vocab": None if s.dec.assistant_vocab is None else len(s.dec.assistant_vocab),
            **assistant,
            "acceptance_rate": assistant["accepted_tokens"] / drafted if drafted else None,
        }
    results["timings"] = timings
    results["config"] = config.to_dict(cfg)
    return results, rows


def _log_results(results: dict, out: Path) -> None:
    for name, d in [*results["datasets"].items(), ("overall", results["overall"])]:
        log.info(
            "%s: WER %s %% (S %d, D %d, I %d of %d words), %d rows (%d empty references, %d unreadable, "
            "%d too long), %.1f s of audio in %.1f s",
            name,
            "–" if d["wer"] is None else f"{d['wer']:.2f}",
            d["substitutions"],
            d["deletions"],
            d["insertions"],
            d["reference_words"],
            d["num_samples"],
            d["empty_references"],
            d["unreadable"],
            d["too_long"],
            d["audio_seconds"],
            d["seconds"],
        )
    if results.get("assistant"):
        a = results["assistant"]
        log.info("assistant: %d of %d drafted tokens accepted", a["accepted_tokens"], a["drafted_tokens"])
    log.info("results: %s", out / "results.json")


def finish(s: Setup, parts: list[tuple[dict, list[dict]]], timings: dict) -> int:
    """Merge the processes' parts, score, write the results (printed instead when they cannot be written)."""
    entries, seconds, assistant = report.merge_parts(parts, len(s.names))
    results, rows = results_of(s, entries, seconds, assistant if s.dec.assistant is not None else None, timings)
    out = storage.location(s.cfg.output_dir)
    errors = report.write_results(out, results, rows if s.cfg.predictions_csv else None, s.names)
    _log_results(results, out)
    if errors:
        print(json.dumps(results, indent=2), file=sys.stdout)
        for e in errors:
            print(f"error: {e}; the results are printed above instead", file=sys.stderr)
        return 1
    return 0


def header(s: Setup, process_index: int, process_count: int, seconds: list[float]) -> dict[str, Any]:
    return {
        "run": run_key(s.cfg),
        "process_index": process_index,
        "process_count": process_count,
        "seconds": seconds,
        "assistant": assistant_counts(s.dec),
    }


def run(cfg: EvalConfig) -> int:
    """Evaluate; 0 when the results were written, 1 when they could not be (they are printed instead).
    Configuration errors (``ValueError``) are raised before any row is transcribed."""
    cfg.init_distributed()
    compile_cache.enable(cfg)
    with compile_cache.CompileClock() as clock:
        s = setup(cfg)
        pi, pc = data_blocks.process_info()
        out = storage.location(cfg.output_dir)
        report.part_path(out, pi).unlink(missing_ok=True)  # a previous run's
        if pc > 1:
            multihost_utils.sync_global_devices("eval: stale parts removed")
        entries, seconds = evaluate_process(s, pi, pc)
    timings = {"process": pi, "load_seconds": round(s.load_seconds, 2), **clock.as_dict()}
    log.info("process %d: loading the model(s) %.1f s, %s", pi, s.load_seconds, clock.summary())
    own = (header(s, pi, pc, seconds), entries)
    if pi != 0:
        report.write_part(out, pi, *own)
        log.info("process %d: %d rows evaluated; process 0 writes the results", pi, len(entries))
        return 0
    others = report.wait_for_parts(out, pc, run_key(cfg), skip=0) if pc > 1 else []
    return finish(s, [own, *others], timings)
