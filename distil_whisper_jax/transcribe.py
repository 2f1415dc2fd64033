"""Transcribe audio files with any Whisper checkpoint: the first thing to try.

    python -m distil_whisper_jax.transcribe clip.wav more/ [--model PATH_OR_HUB_ID] [--batch_size 8]

Without ``--model`` it uses the bundled tiny.en. Prints ``file<TAB>text`` per input (input order), or
writes ``--output_json``. Unreadable inputs are reported on stderr with the reason, counted, and make
the exit status 1; the other files are still transcribed.
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
from tqdm.auto import tqdm

from . import audio, parallel
from . import config as config_lib
from .generate import generate, generation_options, strip
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

    def validate(self) -> None:
        """``ValueError`` naming the flag for a value out of range or an unwritable ``--output_json``."""
        if not self.inputs:
            raise ValueError("no inputs: give audio files or folders")
        for name in ("batch_size", "num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {value}")
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
) -> list[dict]:
    """Transcribe audio files (≤30 s each); returns one dict per input in order:
    ``{"file", "text", "segments"}`` or ``{"file", "error"}`` for an input that could not be read.
    ``devices``: where to run (default all local devices)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be ≥ 1, got {batch_size}")
    files = expand_inputs(paths)
    pre = model if isinstance(model, Pretrained) else load_pretrained(model)
    tok, specials = pre.tokenizer, special_tokens(pre.tokenizer)
    prompt = prompt_ids(specials, language=language, task=task, timestamps=return_timestamps)
    opts = generation_options(
        pre,
        specials,
        num_beams=num_beams,
        return_timestamps=return_timestamps,
        max_new_tokens=max_new_tokens,
        prompt_len=len(prompt),
    )
    devices = list(devices) if devices else jax.local_devices()
    # Every batch is padded to one static shape (one compile), a multiple of the device count.
    batch_size = -(-batch_size // len(devices)) * len(devices)
    params = (
        parallel.replicate(pre.params, parallel.data_mesh(devices)) if len(devices) > 1 else jax.device_put(pre.params)
    )
    results: list[dict] = [{"file": str(f)} for f in files]
    bar = tqdm(total=len(files), unit="file", disable=not progress, desc="transcribe")
    audio_seconds, t0 = 0.0, time.perf_counter()
    for start in range(0, len(files), batch_size):
        idx, waves = [], []
        for i in range(start, min(start + batch_size, len(files))):
            try:
                wav = audio.load_audio(files[i])
                if len(wav) > audio.N_SAMPLES:
                    raise audio.AudioError(
                        f"{files[i]}: {len(wav) / audio.SAMPLE_RATE:.1f} s is longer than 30 s; "
                        "long-form transcription is not supported here yet"
                    )
            except audio.AudioError as e:
                results[i]["error"] = str(e)
                continue
            idx.append(i)
            waves.append(wav)
            audio_seconds += len(wav) / audio.SAMPLE_RATE
        if waves:
            mel = audio.log_mel_spectrogram(waves, n_mels=pre.config.num_mel_bins)
            mel, n = parallel.pad_batch(mel, batch_size)
            tokens = strip(generate(params, mel, prompt, pre.config, opts, DTYPES[dtype], devices)[:n], specials.eot)
            for i, ids in zip(idx, tokens):
                results[i]["text"] = tok.decode(ids, skip_special_tokens=True).strip()
                results[i]["segments"] = segments_from_tokens(ids, tok, specials) if return_timestamps else []
        bar.update(min(batch_size, len(files) - start))
    bar.close()
    elapsed = time.perf_counter() - t0
    log.info(
        "transcribed %d files (%.1f s of audio) in %.1f s: %.1f audio-s/s, %d unreadable",
        len(files),
        audio_seconds,
        elapsed,
        audio_seconds / max(elapsed, 1e-9),
        sum("error" in r for r in results),
    )
    return results


def _print_texts(results: Sequence[dict], out=None) -> None:
    for r in results:
        if "text" in r:
            print(f"{r['file']}\t{r['text']}", file=out or sys.stdout)


def run(cfg: TranscribeConfig) -> int:
    """Transcribe ``cfg.inputs``; print ``file<TAB>text`` lines or write ``--output_json``. 0 when every
    input was transcribed, 1 when some could not be read (each reported on stderr) or the JSON could not be
    written (then the transcripts are printed instead, so that no work is lost). Bad flags raise
    ``ValueError`` before any work; so does an ``--output_json`` whose directory cannot be written."""
    cfg.validate()
    results = transcribe(
        cfg.inputs,
        cfg.model,
        cfg.batch_size,
        cfg.dtype,
        cfg.num_beams,
        cfg.return_timestamps,
        cfg.language,
        cfg.task,
        cfg.max_new_tokens,
    )
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
    status = 1 if any("error" in r for r in results) else 0
    if not cfg.output_json:
        _print_texts(results)
        return status
    try:
        with atomic_write(cfg.output_json, "w") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
    except OSError as e:
        _print_texts(results)
        print(f"error: {write_error(cfg.output_json, e)}; the transcripts are printed above instead", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    from .cli.transcribe import main

    sys.exit(main())
