"""Transcribe audio files with any Whisper checkpoint: the first thing to try.

    python -m distil_whisper_jax.transcribe clip.wav more/ [--model PATH_OR_HUB_ID] [--batch_size 8]

Without ``--model`` it uses the bundled tiny.en. Prints ``file<TAB>text`` per input (input order), or
writes ``--output_json``; ``--output_dir`` adds a ``.txt/.srt/.vtt/.json`` set per input. Each file must
fit the model's input unless ``--long_form chunked`` or ``sequential`` (any length; see ``chunked.py``,
``sequential.py`` and docs/longform.md). Unreadable inputs
are reported on stderr with the reason, counted, and make the exit status 1; the other files are still
transcribed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from tqdm.auto import tqdm

from . import audio, chunked, parallel, sequential, subtitles
from . import config as config_lib
from .generate import GenerationOptions, generate, generation_options, strip
from .model import DTYPES
from .models import Pretrained, load_pretrained
from .token_layout import SpecialTokens, prompt_ids, special_tokens
from .utils import atomic_write, check_writable_dir, write_error

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TranscribeConfig:
    """What to transcribe, with which model, and where the results go."""

    inputs: tuple[str, ...] = config_lib.flag(help="audio files and/or folders of audio files", metavar="AUDIO_OR_DIR")
    model: str | None = config_lib.flag(
        None,
        "model directory (transformers or CTranslate2), openai .pt or ggml file, Orbax run, or hub id; "
        "default: the bundled tiny.en",
    )
    batch_size: int = config_lib.flag(8, "clips per batch (rounded up to a multiple of devices)")
    dtype: Literal["bfloat16", "float32"] = config_lib.flag("float32", "compute dtype (params stay fp32)")
    num_beams: int = config_lib.flag(1, "beam size; 1 = greedy")
    return_timestamps: bool = config_lib.flag(False, "predict segment timestamps")
    language: str | None = config_lib.flag(None, "language code or name (multilingual models); default English")
    task: Literal["transcribe", "translate"] = config_lib.flag("transcribe", "multilingual models only")
    max_new_tokens: int | None = config_lib.flag(None, "cap on generated tokens per clip (≥ 1)")
    output_json: str | None = config_lib.flag(None, "write results here instead of printing file<TAB>text")
    long_form: Literal["none", "chunked", "sequential"] = config_lib.flag(
        "none",
        "none: each file must fit the model's input (30 s); chunked: any length, overlapping windows decoded "
        "in batches and merged, with timestamps; sequential: any length, openai-whisper's algorithm (each window "
        "starts at the last segment end, conditioned on the previous text, with temperature fallback)",
    )
    chunk_length_s: float | None = config_lib.flag(
        None, "window length for --long_form chunked (default and maximum: the model's input length)"
    )
    temperature: float = config_lib.flag(0.0, "--long_form sequential: first sampling temperature (0: greedy)")
    temperature_increment_on_fallback: float | None = config_lib.flag(
        0.2, "--long_form sequential: temperature step when a window fails the thresholds below (0: no fallback)"
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
    output_dir: str | None = config_lib.flag(
        None, "write FILE.txt, .srt, .vtt and .json per input here (timestamps are then always predicted)"
    )

    def validate(self) -> None:
        """``ValueError`` naming the flag for a value out of range or an unwritable ``--output_json``."""
        if not self.inputs:
            raise ValueError("no inputs: give audio files or folders")
        for name in ("batch_size", "num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {value}")
        _check_long_form(self.long_form, self.chunk_length_s, self.num_beams)
        sequential_options(self)
        if self.chunk_length_s is not None and self.chunk_length_s <= 0:
            raise ValueError(f"--chunk_length_s must be > 0, got {self.chunk_length_s}")
        if self.output_dir:
            if Path(self.output_dir).is_file():
                raise ValueError(f"--output_dir {self.output_dir}: is a file; give a directory")
            check_writable_dir(self.output_dir, "--output_dir")
        if self.output_json:
            target = Path(self.output_json)
            if target.is_dir():
                raise ValueError(f"--output_json {target}: is a directory; give a file name")
            check_writable_dir(target.parent, "--output_json")


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


def _check_long_form(long_form: str, chunk_length_s: float | None, num_beams: int = 1) -> None:
    if long_form not in ("none", "chunked", "sequential"):
        raise ValueError(f"--long_form must be none, chunked or sequential, got {long_form!r}")
    if long_form == "sequential" and num_beams > 1:
        raise ValueError("--long_form sequential decodes greedily (with temperature fallback); drop --num_beams")
    if chunk_length_s is not None and long_form != "chunked":
        raise ValueError("--chunk_length_s needs --long_form chunked")


@dataclasses.dataclass
class _Decoder:
    """A batch of waveforms → generated ids, through one compiled program (batches padded to ``batch_size``)."""

    pre: Pretrained
    prompt: tuple[int, ...]
    opts: GenerationOptions
    dtype: str
    devices: tuple[Any, ...]
    params: Any
    batch_size: int
    seconds: float = 0.0  # audio decoded so far (long-form overlaps included)

    def __call__(self, waves: list[np.ndarray]) -> list[list[int]]:
        c = self.pre.config
        self.seconds += sum(len(w) for w in waves) / audio.SAMPLE_RATE
        mel = audio.log_mel_spectrogram(waves, n_mels=c.num_mel_bins, padding=c.n_frames * audio.HOP_LENGTH)
        mel, n = parallel.pad_batch(mel, self.batch_size)
        out = generate(self.params, mel, self.prompt, c, self.opts, DTYPES[self.dtype], list(self.devices))
        return strip(out[:n], self.opts.eot)


def _decoder(pre: Pretrained, batch_size, dtype, num_beams, timestamps, language, task, max_new_tokens, devices):
    specials = special_tokens(pre.tokenizer)
    prompt = prompt_ids(specials, language=language, task=task, timestamps=timestamps)
    opts = generation_options(
        pre,
        specials,
        num_beams=num_beams,
        return_timestamps=timestamps,
        max_new_tokens=max_new_tokens,
        prompt_len=len(prompt),
    )
    devices = list(devices) if devices else jax.local_devices()
    # Every batch is padded to one static shape (one compile), a multiple of the device count.
    batch_size = -(-batch_size // len(devices)) * len(devices)
    params = (
        parallel.replicate(pre.params, parallel.data_mesh(devices)) if len(devices) > 1 else jax.device_put(pre.params)
    )
    return _Decoder(pre, tuple(prompt), opts, dtype, tuple(devices), params, batch_size)


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
    sequential_options: sequential.SequentialOptions | None = None,
) -> list[dict]:
    """Transcribe audio files; returns one dict per input in order: ``{"file", "text", "segments"}`` or
    ``{"file", "error"}`` for an input that could not be read. ``devices``: where to run (default all
    local devices).

    ``long_form="none"``: each file must fit the model's input (30 s for Whisper); a longer one gets an
    error. ``"chunked"``: files of any length, cut into windows of ``chunk_length_s`` (default: the model's
    input length) overlapping by ``stride_length_s`` on each side (default: a sixth of the chunk); always
    with timestamped segments. ``"sequential"``: openai-whisper's algorithm (``sequential.py``), also with
    timestamped segments, its settings in ``sequential_options``."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be ≥ 1, got {batch_size}")
    _check_long_form(long_form, chunk_length_s, num_beams)
    files = expand_inputs(paths)
    pre = model if isinstance(model, Pretrained) else load_pretrained(model)
    if long_form == "chunked":
        chunk, stride = chunked.window_sizes(pre.config, chunk_length_s, stride_length_s)
    timestamps = return_timestamps or long_form == "chunked"
    dec = _decoder(pre, batch_size, dtype, num_beams, timestamps, language, task, max_new_tokens, devices)
    specials = special_tokens(pre.tokenizer)
    bar = tqdm(total=len(files), unit="file", disable=not progress, desc="transcribe")
    t0 = time.perf_counter()
    if long_form == "chunked":
        results = chunked.transcribe_files(
            files,
            dec,
            dec.batch_size,
            chunk,
            stride,
            specials.timestamp_begin,
            specials.eot,
            lambda ids: pre.tokenizer.decode(ids, skip_special_tokens=True),
            on_done=lambda i: bar.update(1),
        )
    elif long_form == "sequential":
        results = _sequential(files, dec, language, task, max_new_tokens, sequential_options, bar)
    else:
        results = _short_form(files, dec, timestamps, bar)
    bar.close()
    elapsed = time.perf_counter() - t0
    log.info(
        "transcribed %d files (%.1f s of audio decoded) in %.1f s: %.1f audio-s/s, %d unreadable",
        len(files),
        dec.seconds,
        elapsed,
        dec.seconds / max(elapsed, 1e-9),
        sum("error" in r for r in results),
    )
    return results


def _sequential(files: Sequence[Path], dec: _Decoder, language, task, max_new_tokens, options, bar) -> list[dict]:
    """``--long_form sequential``: the files streamed block by block, on ``dec``'s devices and parameters."""
    stats: dict = {}
    results = sequential.transcribe_files(
        [str(f) for f in files],
        lambda i: audio.stream_audio(files[i]),
        dec.pre,
        params=dec.params,
        batch_size=dec.batch_size,
        dtype=DTYPES[dec.dtype],
        devices=dec.devices,
        language=language,
        task=task,
        max_new_tokens=max_new_tokens,
        options=options,
        on_done=lambda i: bar.update(1),
        stats=stats,
        progress=not bar.disable,
    )
    dec.seconds += stats["seconds"]
    return results


def _short_form(files: Sequence[Path], dec: _Decoder, timestamps: bool, bar) -> list[dict]:
    """Each file as one model input; a file longer than that gets an error naming ``--long_form chunked``."""
    tok, specials = dec.pre.tokenizer, special_tokens(dec.pre.tokenizer)
    limit = chunked.input_seconds(dec.pre.config)
    results: list[dict] = [{"file": str(f)} for f in files]
    for start in range(0, len(files), dec.batch_size):
        idx, waves = [], []
        for i in range(start, min(start + dec.batch_size, len(files))):
            try:
                wav = audio.load_audio(files[i])
                if len(wav) > round(limit * audio.SAMPLE_RATE):
                    raise audio.AudioError(
                        f"{files[i]}: {len(wav) / audio.SAMPLE_RATE:.1f} s is longer than the model's "
                        f"{limit:g} s input; use --long_form chunked or sequential for long recordings"
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
        bar.update(min(dec.batch_size, len(files) - start))
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
        if "error" in r:
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
    files = expand_inputs(cfg.inputs)
    stems = output_stems(files, cfg.output_dir) if cfg.output_dir else []
    results = transcribe(
        files,
        cfg.model,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        num_beams=cfg.num_beams,
        return_timestamps=cfg.return_timestamps or bool(cfg.output_dir),
        language=cfg.language,
        task=cfg.task,
        max_new_tokens=cfg.max_new_tokens,
        long_form=cfg.long_form,
        chunk_length_s=cfg.chunk_length_s,
        sequential_options=sequential_options(cfg) if cfg.long_form == "sequential" else None,
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


if __name__ == "__main__":
    from .cli.transcribe import main

    sys.exit(main())
