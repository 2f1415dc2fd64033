"""Transcribe audio files with any Whisper checkpoint: the first thing to try.

    python -m distil_whisper_jax.transcribe clip.wav more/ [--model PATH_OR_HUB_ID] [--batch_size 8]

Without ``--model`` it uses the bundled tiny.en. Prints ``file<TAB>text`` per input (input order), or
writes ``--output_json``; ``--output_dir`` adds a ``.txt/.srt/.vtt/.json`` set per input. Each file must
fit the model's input unless ``--long_form chunked``, ``sequential`` or ``vad`` (any length; see ``chunked.py``,
``sequential.py``, ``vad_pieces.py`` and docs/longform.md). Unreadable inputs
are reported on stderr with the reason, counted, and make the exit status 1; the other files are still
transcribed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from distil_whisper_jax.core.model import DTYPES
from distil_whisper_jax.decode import chunked, sequential, vad_pieces
from distil_whisper_jax.decode.decoding import Decoder, check_assistant_mode, decoder
from distil_whisper_jax.infra import compile_cache
from distil_whisper_jax.infra import config as config_lib
from distil_whisper_jax.infra.compile_cache import CompileCacheFlags
from distil_whisper_jax.infra.files import atomic_write, check_writable, write_error
from distil_whisper_jax.infra.flag_groups import DecodingFlags
from distil_whisper_jax.speech import audio, subtitles, vad
from distil_whisper_jax.speech.token_layout import SpecialTokens, special_tokens
from distil_whisper_jax.weights.loading import Pretrained, load_pretrained

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TranscribeConfig(DecodingFlags, CompileCacheFlags):
    """What to transcribe, with which model, and where the results go."""

    inputs: tuple[str, ...] = config_lib.flag(help="audio files and/or folders of audio files", metavar="AUDIO_OR_DIR")
    model_name_or_path: str | None = config_lib.flag(
        None,
        "model directory (transformers or CTranslate2), openai .pt or ggml file, Orbax run, or hub id; "
        "default: the bundled tiny.en",
        aliases=("model",),
    )
    batch_size: int = config_lib.flag(8, "clips per batch (rounded up to a multiple of devices)")
    dtype: Literal["bfloat16", "float32"] = config_lib.flag("float32", "compute dtype (params stay fp32)")
    return_timestamps: bool = config_lib.flag(False, "predict segment timestamps")
    language: str | None = config_lib.flag(None, "language code or name (multilingual models); default English")
    task: Literal["transcribe", "translate"] = config_lib.flag("transcribe", "multilingual models only")
    output_json: str | None = config_lib.flag(None, "write results here instead of printing file<TAB>text")
    output_dir: str | None = config_lib.flag(
        None, "write FILE.txt, .srt, .vtt and .json per input here (timestamps are then always predicted)"
    )
    temperature: float = config_lib.flag(0.0, "--long_form sequential: first sampling temperature (0: greedy)")
    temperature_increment_on_fallback: float | None = config_lib.flag(
        0.2,
        "--long_form sequential: temperature step when a window fails the thresholds below (0: no fallback); "
        "--long_form vad: the temperatures for a piece that loops",
    )
    compression_ratio_threshold: float | None = config_lib.flag(
        2.4, "--long_form sequential: decode again hotter when the text's gzip compression ratio is above this"
    )
    logprob_threshold: float | None = config_lib.flag(
        -1.0, "--long_form sequential: decode again hotter when the average log-probability is below this"
    )
    no_speech_threshold: float | None = config_lib.flag(
        0.6,
        "--long_form sequential: a window is silence if its no-speech probability is above this (and its "
        "log-probability below --logprob_threshold)",
    )
    condition_on_previous_text: bool = config_lib.flag(
        True, "--long_form sequential: prompt each window with the text before it"
    )
    seed: int = config_lib.flag(0, "--long_form sequential: random seed of the temperature sampling")
    assistant_model: str | None = config_lib.flag(
        None,
        "speculative decoding: a smaller model with the same tokenizer (e.g. a distilled student) drafts tokens "
        "that --model verifies; same text as greedy --model alone (greedy only, one device)",
    )

    def validate(self) -> None:
        """``ValueError`` naming the flag for a value out of range or an unwritable ``--output_json``."""
        if not self.inputs:
            raise ValueError("no inputs: give audio files or folders")
        for name in ("batch_size", "num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {value}")
        check_long_form(self.long_form, self.chunk_length_s, self.num_beams)
        sequential_options(self)
        check_assistant_mode(self.assistant_model, self.long_form, self.num_beams)
        if self.num_assistant_tokens < 1:
            raise ValueError(f"--num_assistant_tokens must be ≥ 1, got {self.num_assistant_tokens}")
        if self.assistant_vocab_size < 0:
            raise ValueError(f"--assistant_vocab_size must be ≥ 0, got {self.assistant_vocab_size}")
        if self.chunk_length_s is not None and self.chunk_length_s <= 0:
            raise ValueError(f"--chunk_length_s must be > 0, got {self.chunk_length_s}")
        if self.output_dir:
            if Path(self.output_dir).is_file():
                raise ValueError(f"--output_dir {self.output_dir}: is a file; give a directory")
            check_writable(self.output_dir, "--output_dir")
        if self.output_json:
            target = Path(self.output_json)
            if target.is_dir():
                raise ValueError(f"--output_json {target}: is a directory; give a file name")
            check_writable(target.parent, "--output_json")


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to their audio files."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in audio.AUDIO_EXTENSIONS)
            if not found:
                raise ValueError(f"{p}: folder contains no audio files ({', '.join(audio.AUDIO_EXTENSIONS)})")
            out += found
        else:
            out.append(p)
    return out


def segments_from_tokens(
    ids: Sequence[int], tokenizer: Any, specials: SpecialTokens, offset: float = 0.0
) -> list[dict]:
    """Split timestamped ids into ``{"start", "end", "text"}`` segments (0.02 s per timestamp step)."""
    segments, text_ids, start = [], [], None
    for t in ids:
        if t >= specials.timestamp_begin:
            time_s = offset + (t - specials.timestamp_begin) * 0.02
            if start is None:
                start = time_s
            else:
                segments.append(
                    {
                        "start": round(start, 2),
                        "end": round(time_s, 2),
                        "text": tokenizer.decode(text_ids, skip_special_tokens=True),
                    }
                )
                text_ids, start = [], None
        else:
            text_ids.append(t)
    if text_ids:  # unterminated last segment (max_new_tokens reached)
        segments.append(
            {"start": round(start or 0.0, 2), "end": None, "text": tokenizer.decode(text_ids, skip_special_tokens=True)}
        )
    return segments


def sequential_options(cfg: TranscribeConfig) -> sequential.SequentialOptions:
    """The ``--long_form sequential`` settings of ``cfg`` (``ValueError`` naming the flag when out of range):
    temperatures from ``--temperature`` up to 1 in steps of ``--temperature_increment_on_fallback``."""
    t0, step = cfg.temperature, cfg.temperature_increment_on_fallback
    if step is not None and step < 0:
        raise ValueError(f"--temperature_increment_on_fallback must be ≥ 0 or none, got {step}")
    if not 0 <= t0 <= 100:
        raise ValueError(f"--temperature must be in 0..100, got {t0}")
    temps = (t0,) if not step else tuple(round(t, 6) for t in np.arange(t0, 1.0 + 1e-6, step)) or (t0,)
    if not 0 <= cfg.seed < 2**31:
        raise ValueError(f"--seed must be in 0..2**31-1, got {cfg.seed}")
    return sequential.SequentialOptions(
        temperatures=temps,
        compression_ratio_threshold=cfg.compression_ratio_threshold,
        logprob_threshold=cfg.logprob_threshold,
        no_speech_threshold=cfg.no_speech_threshold,
        condition_on_previous_text=cfg.condition_on_previous_text,
        seed=cfg.seed,
    )


def check_long_form(long_form: str, chunk_length_s: float | None, num_beams: int = 1) -> None:
    """``ValueError`` naming the flag for an unknown long-form mode or a misplaced window length."""
    if long_form not in ("none", "chunked", "sequential", "vad"):
        raise ValueError(f"--long_form must be none, chunked, sequential or vad, got {long_form!r}")
    if long_form == "vad":
        vad.check_available()
    if long_form == "sequential" and num_beams > 1:
        raise ValueError("--long_form sequential decodes greedily (with temperature fallback); drop --num_beams")
    if chunk_length_s is not None and long_form != "chunked":
        raise ValueError("--chunk_length_s needs --long_form chunked")


def transcribe(
    paths: Sequence[str | Path],
    model: str | Pretrained | None = None,
    batch_size: int = 8,
    dtype: str = "float32",
    num_beams: int = 1,
    return_timestamps: bool = False,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int | None = None,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
    long_form: str = "none",
    chunk_length_s: float | None = None,
    stride_length_s: float | None = None,
    assistant_model: str | Pretrained | None = None,
    num_assistant_tokens: int = 5,
    sequential_options: sequential.SequentialOptions | None = None,
    assistant_vocab_size: int = 0,
) -> list[dict]:
    """Transcribe audio files; returns one dict per input in order: ``{"file", "text", "segments"}`` or
    ``{"file", "error"}`` for an input that could not be read. ``devices``: where to run (default all
    local devices).

    ``long_form="none"``: each file must fit the model's input (30 s for Whisper); a longer one gets an
    error. ``"chunked"``: files of any length, cut into windows of ``chunk_length_s`` (default: the model's
    input length) overlapping by ``stride_length_s`` on each side (default: a sixth of the chunk); always
    with timestamped segments. ``assistant_model``: speculative decoding (greedy only; the same text, drafted
    by a smaller model that shares the tokenizer); the acceptance rate is logged. ``"sequential"``:
    openai-whisper's algorithm (``sequential.py``), files streamed block by block, also with timestamped
    segments, its settings in ``sequential_options``. ``"vad"``: files of any length, cut at the pauses the
    voice-activity model finds into pieces of at most one window (``vad_pieces.py``), timestamped segments; a
    piece whose greedy output loops is decoded again at the temperatures of ``sequential_options``."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be ≥ 1, got {batch_size}")
    check_long_form(long_form, chunk_length_s, num_beams)
    check_assistant_mode(assistant_model, long_form, num_beams)
    files = expand_inputs(paths)
    started = time.perf_counter()
    pre = model if isinstance(model, Pretrained) else load_pretrained(model)
    assistant = None
    if assistant_model is not None:
        assistant = assistant_model if isinstance(assistant_model, Pretrained) else load_pretrained(assistant_model)
    loaded = time.perf_counter() - started
    timestamps = return_timestamps or long_form != "none"
    dec = decoder(
        pre, batch_size, dtype, num_beams, timestamps, language, task, max_new_tokens, devices, assistant,
        num_assistant_tokens, assistant_vocab_size=assistant_vocab_size,
    )  # fmt: skip
    bar = tqdm(total=len(files), unit="file", disable=not progress, desc="transcribe")
    t0 = time.perf_counter()
    names = [str(f) for f in files]
    with compile_cache.CompileClock() as clock:
        results = transcribe_loaded(
            names,
            # long-form reads a file block by block (bounded memory for recordings of hours)
            (lambda i: audio.stream_audio(files[i])) if long_form != "none" else (lambda i: audio.load_audio(files[i])),
            dec,
            long_form,
            chunk_length_s,
            stride_length_s,
            return_timestamps=timestamps,
            on_done=lambda i: bar.update(1),
            sequential_options=sequential_options,
            progress=progress,
        )
    bar.close()
    _log_summary(results, dec, time.perf_counter() - t0)
    log.info("loading the model(s) %.1f s, %s", loaded, clock.summary())
    return results


def _log_summary(results: Sequence[dict], dec: Decoder, elapsed: float) -> None:
    """One line of what was done (and the assistant's acceptance with speculative decoding)."""
    log.info(
        "transcribed %d files (%.1f s of audio decoded) in %.1f s: %.1f audio-s/s, %d unreadable",
        len(results),
        dec.seconds,
        elapsed,
        dec.seconds / max(elapsed, 1e-9),
        sum("error" in r for r in results),
    )
    if dec.assistant is not None:
        log.info(
            "speculative decoding: %d of %d drafted tokens accepted (%.1f %%), %d verification passes",
            dec.accepted,
            dec.drafted,
            100.0 * (dec.acceptance or 0.0),
            dec.passes,
        )


def transcribe_loaded(
    names: Sequence[str],
    load: Callable[[int], np.ndarray],
    dec: Decoder,
    long_form: str = "none",
    chunk_length_s: float | None = None,
    stride_length_s: float | None = None,
    return_timestamps: bool = False,
    on_done: Callable[[int], None] | None = None,
    sequential_options: sequential.SequentialOptions | None = None,
    progress: bool = False,
) -> list[dict]:
    """Transcribe inputs given by name and loader: ``load(i)`` returns input ``i``'s 16 kHz waveform (for
    sequential also an iterable of blocks) or raises ``audio.AudioError`` (then its result is ``{"file",
    "error"}``). The long-form dispatch of ``transcribe``; ``dec`` (from ``decoder``) must have a timestamp
    prompt for long-form."""
    check_long_form(long_form, chunk_length_s, dec.opts.num_beams)
    if long_form == "sequential":
        return _sequential(names, load, dec, sequential_options, on_done, progress)
    if long_form == "none":
        return _short_form(names, load, dec, return_timestamps, on_done)
    # chunked and vad: windows of timestamped tokens, merged per file
    sp = special_tokens(dec.pre.tokenizer)

    def text(ids: list[int]) -> str:
        return dec.pre.tokenizer.decode(ids, skip_special_tokens=True)

    if long_form == "vad":
        window = round(dec.pre.config.input_seconds * audio.SAMPLE_RATE)
        fallback = _vad_fallback(dec, sequential_options, sp.eot)
        return vad_pieces.transcribe_files(
            names, load, dec, dec.batch_size, window, sp.timestamp_begin, sp.eot, text, on_done=on_done,
            fallback=fallback,
        )  # fmt: skip
    chunk, stride = chunked.window_sizes(dec.pre.config, chunk_length_s, stride_length_s)
    return chunked.transcribe_files(
        names, load, dec, dec.batch_size, chunk, stride, sp.timestamp_begin, sp.eot, text, on_done=on_done
    )


def _vad_fallback(dec: Decoder, options: sequential.SequentialOptions | None, eot: int) -> vad_pieces.Fallback | None:
    """``--long_form vad``: a piece whose greedy output loops is decoded again at sequential mode's temperatures
    until it no longer does (None when the temperatures leave no fallback)."""
    loops = functools.partial(vad_pieces.loops, eot=eot)
    decode = sequential.window_fallback(dec.pre, **_sequential_settings(dec), options=options, loops=loops)
    return None if decode is None else vad_pieces.Fallback(loops, decode)


def _sequential_settings(dec: Decoder) -> dict:
    """What sequential decoding takes from ``dec``: its parameters and devices, batch, dtype, language and task."""
    return dict(
        params=dec.params,
        batch_size=dec.batch_size,
        dtype=DTYPES[dec.dtype],
        devices=dec.devices,
        language=dec.language,
        task=dec.task,
        max_new_tokens=dec.max_new_tokens,
    )


def _sequential(names, load, dec: Decoder, options, on_done, progress: bool) -> list[dict]:
    """``--long_form sequential`` on ``dec``'s model, devices, parameters and language."""
    stats: dict = {}
    results = sequential.transcribe_files(
        names, load, dec.pre, **_sequential_settings(dec), options=options, on_done=on_done, stats=stats,
        progress=progress,
    )  # fmt: skip
    dec.seconds += stats["seconds"]
    return results


def _short_form(
    names: Sequence[str],
    load: Callable[[int], np.ndarray],
    dec: Decoder,
    timestamps: bool,
    on_done: Callable[[int], None] | None,
) -> list[dict]:
    """Each input as one model input; one longer than that gets an error naming ``--long_form chunked``."""
    tok, specials = dec.pre.tokenizer, special_tokens(dec.pre.tokenizer)
    limit = dec.pre.config.input_seconds
    results: list[dict] = [{"file": str(n)} for n in names]
    for start in range(0, len(names), dec.batch_size):
        idx, waves = [], []
        for i in range(start, min(start + dec.batch_size, len(names))):
            try:
                wav = load(i)
                if len(wav) > round(limit * audio.SAMPLE_RATE):
                    raise audio.AudioError(
                        f"{names[i]}: {len(wav) / audio.SAMPLE_RATE:.1f} s is longer than the model's "
                        f"{limit:g} s input; use --long_form chunked, sequential or vad for long recordings"
                    )
            except audio.AudioError as e:
                results[i]["error"] = str(e)
                continue
            idx.append(i)
            waves.append(wav)
        if waves:
            for i, ids in zip(idx, dec(waves)):
                results[i]["text"] = tok.decode(ids, skip_special_tokens=True).strip()
                results[i]["segments"] = segments_from_tokens(ids, tok, specials) if timestamps else []
        for i in range(start, min(start + dec.batch_size, len(names))):
            if on_done:
                on_done(i)
    return results


def _print_texts(results: Sequence[dict], out=None) -> None:
    for r in results:
        if "text" in r:
            print(f"{r['file']}\t{r['text']}", file=out or sys.stdout)


def output_stems(files: Sequence[Path], output_dir: str | Path) -> list[Path]:
    """``output_dir/<input stem>`` per input (``.txt``/``.srt``/``.vtt``/``.json`` get appended); two inputs
    with the same stem are refused, naming both, since one set of files would overwrite the other."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(
                f"--output_dir: {seen[f.stem]} and {f} would both write {f.stem}.*; transcribe them in separate runs"
            )
        seen[f.stem] = f
    return [Path(output_dir) / f.stem for f in files]


def write_outputs(results: Sequence[dict], stems: Sequence[Path]) -> list[str]:
    """Each transcribed input's ``.txt``, ``.srt``, ``.vtt`` and ``.json`` (atomic writes); returns the write
    errors (empty when all were written)."""
    errors = []
    for r, stem in zip(results, stems):
        if "text" not in r:  # unreadable (a file damaged part-way keeps what was transcribed before it)
            continue
        for ext, render in subtitles.WRITERS.items():
            target = stem.with_name(f"{stem.name}.{ext}")
            try:
                with atomic_write(target, "w") as f:
                    f.write(render(r))
            except OSError as e:
                errors.append(str(write_error(target, e)))
    return errors


def run(cfg: TranscribeConfig) -> int:
    """Transcribe ``cfg.inputs``; print ``file<TAB>text`` lines or write ``--output_json``, and with
    ``--output_dir`` one ``.txt/.srt/.vtt/.json`` set per input. 0 when every input was transcribed and
    written, 1 when some could not be read (each reported on stderr) or a result could not be written (then
    the transcripts are printed, so that no work is lost). Bad flags raise ``ValueError`` before any work;
    so does an output location that cannot be written."""
    cfg.validate()
    compile_cache.enable(cfg)
    files = expand_inputs(cfg.inputs)
    stems = output_stems(files, cfg.output_dir) if cfg.output_dir else []
    results = transcribe(
        files,
        cfg.model_name_or_path,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        num_beams=cfg.num_beams,
        return_timestamps=cfg.return_timestamps or bool(cfg.output_dir),
        language=cfg.language,
        task=cfg.task,
        max_new_tokens=cfg.max_new_tokens,
        long_form=cfg.long_form,
        chunk_length_s=cfg.chunk_length_s,
        assistant_model=cfg.assistant_model,
        num_assistant_tokens=cfg.num_assistant_tokens,
        sequential_options=sequential_options(cfg) if cfg.long_form in ("sequential", "vad") else None,
        assistant_vocab_size=cfg.assistant_vocab_size,
    )
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
    status = 1 if any("error" in r for r in results) else 0
    write_errors = write_outputs(results, stems)
    if cfg.output_json:
        try:
            with atomic_write(cfg.output_json, "w") as f:
                json.dump(results, f, indent=2, ensure_ascii=False)
        except OSError as e:
            write_errors.append(str(write_error(cfg.output_json, e)))
    if not cfg.output_json or write_errors:
        _print_texts(results)
    for e in write_errors:
        print(f"error: {e}; the transcripts are printed above instead", file=sys.stderr)
    return 1 if write_errors else status
