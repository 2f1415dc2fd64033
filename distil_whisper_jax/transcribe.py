"""Transcribe audio files with any Whisper checkpoint: the first thing to try.

    python -m distil_whisper_jax.transcribe clip.wav more/ [--model PATH_OR_HUB_ID] [--batch_size 8]

Without ``--model`` it uses the bundled tiny.en. Prints ``file<TAB>text`` per input (input order), or
writes ``--output_json``. Unreadable inputs are reported on stderr with the reason, counted, and make
the exit status 1; the other files are still transcribed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from . import audio, parallel
from .convert import Pretrained, load_pretrained
from .generate import GenerationOptions, generate, strip
from .model import DTYPES
from .tokenizer import SpecialTokens, prompt_ids, special_tokens
from .utils import setup_logging

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac", ".aiff", ".aif")


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to their audio files."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise ValueError(f"{p}: folder contains no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            out += found
        else:
            out.append(p)
    return out


def generation_options(
    pre: Pretrained,
    specials: SpecialTokens,
    *,
    num_beams: int = 1,
    return_timestamps: bool = False,
    max_new_tokens: int | None = None,
    prompt_len: int = 3,
) -> GenerationOptions:
    """Decoding options for a checkpoint: its suppress lists, and as many new tokens as fit."""
    gen = pre.generation_defaults
    room = pre.config.max_target_positions - prompt_len
    return GenerationOptions(
        max_new_tokens=min(max_new_tokens or room // 2, room),
        num_beams=num_beams,
        return_timestamps=return_timestamps,
        eot=specials.eot,
        timestamp_begin=specials.timestamp_begin,
        suppress_tokens=tuple(gen.suppress_tokens),
        begin_suppress_tokens=tuple(gen.begin_suppress_tokens),
    )


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distil_whisper_jax.transcribe",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="AUDIO_OR_DIR", help="audio files and/or folders of audio files")
    p.add_argument(
        "--model",
        default=None,
        help="model directory (transformers or CTranslate2), openai .pt file, or hub id; default: the bundled tiny.en",
    )
    p.add_argument("--batch_size", type=int, default=8, help="clips per batch (rounded up to a multiple of devices)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype (params stay fp32)")
    p.add_argument("--num_beams", type=int, default=1, help="beam size; 1 = greedy")
    p.add_argument("--return_timestamps", action="store_true", help="predict segment timestamps")
    p.add_argument("--language", default=None, help="language code or name (multilingual models); default English")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe", help="multilingual models only")
    p.add_argument("--max_new_tokens", type=int, default=None, help="cap on generated tokens per clip")
    p.add_argument("--output_json", default=None, help="write results here instead of printing file<TAB>text")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        results = transcribe(
            args.inputs,
            args.model,
            args.batch_size,
            args.dtype,
            args.num_beams,
            args.return_timestamps,
            args.language,
            args.task,
            args.max_new_tokens,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
    if args.output_json:
        from .utils import atomic_write

        with atomic_write(args.output_json, "w") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
    else:
        for r in results:
            if "text" in r:
                print(f"{r['file']}\t{r['text']}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
