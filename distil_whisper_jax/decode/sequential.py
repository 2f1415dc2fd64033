"""Sequential long-form transcription (openai-whisper's algorithm), batched across files.

Each file is decoded window by window (a window is the model's input: 30 s, 15 s for a 750-position
student). A window starts where the previous one's last complete segment ended (the whole window is
skipped over when its output ends on a single timestamp or has no complete segment), and is decoded after
a prompt holding the text decoded so far (``<|startofprev|>`` + its last 223 tokens) unless that text was
produced at a temperature above 0.5 or ``condition_on_previous_text`` is off. A window whose output looks
wrong (gzip compression ratio above ``compression_ratio_threshold``: repetitive; average log-probability
below ``logprob_threshold``) is decoded again at the next temperature of ``temperatures`` (sampling), unless
it is silence (no-speech probability above ``no_speech_threshold`` and a low log-probability), which is
skipped without text.

Batching: up to ``batch_size`` files advance in lockstep, one window each per step, through one compiled
program (``prompted.generate_prompted``: static shapes, right-padded prompts, a temperature per row); a
finished file leaves its row to the next file. A row's sampling key depends on the seed, the window's
position and the temperature only, so a file's result does not depend on the files it shares batches with.

Memory: a file is read through an iterator of sample blocks (``audio.stream_audio`` for paths), and only
the samples from the current window's start onwards are kept, so a file of hours costs a few windows.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from distil_whisper_jax.core import parallel
from distil_whisper_jax.decode.decoding import padded_rows
from distil_whisper_jax.decode.generate import GenerationOptions, generation_options
from distil_whisper_jax.decode.prompted import generate_prompted
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import TIME_PRECISION, SpecialTokens, prompt_ids, special_tokens
from distil_whisper_jax.weights.loading import Pretrained

log = logging.getLogger(__name__)

SAMPLES_PER_TIMESTAMP = round(TIME_PRECISION * audio.SAMPLE_RATE)  # 320


@dataclasses.dataclass(frozen=True)
class SequentialOptions:
    """openai-whisper's ``transcribe`` settings, with its defaults."""

    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    seed: int = 0
    max_previous: int = 223  # previous-text tokens in a prompt (openai: n_text_ctx // 2 - 1)

    def __post_init__(self):
        if not self.temperatures or any(not 0 <= t <= 100 for t in self.temperatures):
            raise ValueError(f"--temperature must be one or more values ≥ 0, got {self.temperatures}")
        if self.max_previous < 0:
            raise ValueError(f"max_previous must be ≥ 0, got {self.max_previous}")


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression: high for repetitive output."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def split_window(ids: Sequence[int], timestamp_begin: int, window_samples: int) -> tuple[list[tuple], int]:
    """openai-whisper's reading of one window's output: ``([(start_s, end_s, ids), ...], advance)``, times
    relative to the window start, ``advance`` the samples to move the next window by: to the last complete
    segment's end, or the whole window (``window_samples``, the audio in it) when the output ends on a single
    timestamp (nothing more is spoken) or holds no pair of consecutive timestamps (then one segment)."""
    ids = list(ids)
    is_ts = [t >= timestamp_begin for t in ids]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(ids) - 1) if is_ts[i] and is_ts[i + 1]]
    step = lambda t: (t - timestamp_begin) * TIME_PRECISION
    if not cuts:
        stamps = [t for t in ids if t >= timestamp_begin]
        duration = window_samples / audio.SAMPLE_RATE
        if stamps and stamps[-1] != timestamp_begin:
            duration = step(stamps[-1])
        return [(0.0, duration, ids)], window_samples
    if single_ending:
        cuts.append(len(ids))
    segments, last = [], 0
    for cut in cuts:
        piece = ids[last:cut]
        segments.append((step(piece[0]), step(piece[-1]), piece))
        last = cut
    advance = window_samples if single_ending else (ids[last - 1] - timestamp_begin) * SAMPLES_PER_TIMESTAMP
    # never past the window: a shorter-context model (15 s) can still emit timestamps up to 30 s
    return segments, min(advance, window_samples) if advance > 0 else window_samples


class _Samples:
    """A file's samples from the current window's start on, pulled from an iterator of blocks as needed."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self.blocks = blocks
        self.buf = np.zeros(0, np.float32)  # the samples read and still needed
        self.start = 0  # the file position of buf[0]
        self.total: int | None = None  # the file's length, once the blocks ran out

    def window(self, seek: int, n: int) -> np.ndarray:
        """Samples ``seek .. seek + n`` (fewer at the end; empty past it). Earlier samples are dropped."""
        while self.total is None and self.start + len(self.buf) < seek + n:
            block = next(self.blocks, None)
            if block is None:
                self.total = self.start + len(self.buf)
            else:
                self.buf = np.concatenate([self.buf, block])
        drop = min(max(seek - self.start, 0), len(self.buf))
        self.buf, self.start = self.buf[drop:], self.start + drop
        return self.buf[seek - self.start : seek - self.start + n]


@dataclasses.dataclass
class _File:
    """A file being decoded: where its window is, what it has produced, and at which temperature."""

    index: int
    samples: _Samples
    seek: int = 0
    window: np.ndarray | None = None
    mel: np.ndarray | None = None
    temp_i: int = 0
    tokens: list[int] = dataclasses.field(default_factory=list)  # every segment's tokens so far
    reset_since: int = 0  # the prompt uses tokens[reset_since:]
    segments: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Runner:
    """What every decoding step needs: the model and where it runs, what is decoded, and the batch's layout.
    Built by :func:`_runner`."""

    # The model and where it runs.
    pre: Pretrained
    params: Any  # pre's parameters, replicated on the devices when there are several
    dtype: Any  # compute dtype
    devices: list
    # What is decoded.
    specials: SpecialTokens
    language: str | None  # None: the model's default (English-only models) or detected
    task: str
    generation: GenerationOptions  # the same for every window: one compiled program
    options: SequentialOptions  # max_previous capped to what the decoder fits
    # The batch's layout.
    batch: int  # rows per step, a multiple of the device count
    window_samples: int  # audio samples per window: the model's input length
    capacity: int  # prompt tokens per row: the task prompt plus the longest previous-text prompt

    def decode_text(self, ids: list[int]) -> str:
        return self.pre.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt(self, f: _File) -> list[int]:
        previous = f.tokens[f.reset_since :] if self.options.max_previous > 0 else []
        return prompt_ids(
            self.specials,
            self.language,
            self.task,
            timestamps=True,
            previous=previous or None,
            max_previous=self.options.max_previous,
        )

    def step(self, files: list[_File]) -> list[tuple[list[int], float, float]]:
        """Decode every file's current window at its current temperature: (ids, sum logprob, no-speech)."""
        b, c = self.batch, self.pre.config
        mel = np.zeros((b, c.num_mel_bins, c.n_frames), np.float32)
        prompts = np.full((b, self.capacity), self.specials.eot, np.int32)
        # Rows past len(files) are filler: prompt length 0.
        lens, sot, seeks, temp_is = (np.zeros(b, np.int32) for _ in range(4))
        temps = np.zeros(b, np.float32)
        for r, f in enumerate(files):
            p = self.prompt(f)
            mel[r], prompts[r, : len(p)], lens[r], sot[r] = f.mel, p, len(p), p.index(self.specials.sot)
            temps[r], seeks[r], temp_is[r] = self.options.temperatures[f.temp_i], f.seek, f.temp_i
        keys = np.asarray(_row_keys(self.options.seed, seeks, temp_is))
        out = generate_prompted(
            self.params,
            mel,
            prompts,
            lens,
            sot,
            temps,
            keys,
            c,
            self.generation,
            self.specials.no_speech,
            dtype=self.dtype,
            devices=self.devices,
        )
        eot = self.specials.eot
        rows = []
        for r in range(len(files)):
            ids = out.tokens[r].tolist()
            rows.append(
                (ids[: ids.index(eot)] if eot in ids else ids, float(out.sum_logprob[r]), float(out.no_speech_prob[r]))
            )
        return rows


@jax.jit
def _row_keys(seed, seeks, temp_is):
    """One PRNG key per row from the seed, the window's first sample and the temperature's index."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda s, t: jax.random.fold_in(jax.random.fold_in(base, s), t))(seeks, temp_is)


def _needs_fallback(o: SequentialOptions, ratio: float, avg_logprob: float, no_speech: float) -> bool:
    """openai-whisper's test: repetitive or improbable output, unless it looks like silence."""
    bad = (o.compression_ratio_threshold is not None and ratio > o.compression_ratio_threshold) or (
        o.logprob_threshold is not None and avg_logprob < o.logprob_threshold
    )
    silent = (
        o.no_speech_threshold is not None
        and no_speech > o.no_speech_threshold
        and o.logprob_threshold is not None
        and avg_logprob < o.logprob_threshold
    )
    return bad and not silent


def _is_silence(o: SequentialOptions, avg_logprob: float, no_speech: float) -> bool:
    """Skip the window without text: no-speech probability high and log-probability not high enough."""
    if o.no_speech_threshold is None or no_speech <= o.no_speech_threshold:
        return False
    return o.logprob_threshold is None or avg_logprob <= o.logprob_threshold


def _accept(run: _Runner, f: _File, name: str, ids: list[int], stats: dict, raw: tuple[float, float]) -> None:
    """Take a window's output: add its segments and tokens to the file and move its window on. A window
    taken as silence only moves on (the prompt is left as it was, as openai-whisper does)."""
    o, sr = run.options, audio.SAMPLE_RATE
    size = len(f.window)
    f.temp_i = 0
    if _is_silence(o, *raw):  # unrounded (average log-prob, no-speech probability)
        log.info(
            "%s: %.2f-%.2f s taken as silence (no-speech probability %.2f)",
            name,
            f.seek / sr,
            (f.seek + size) / sr,
            stats["no_speech_prob"],
        )
        f.seek += size
        return
    pieces, advance = split_window(ids, run.specials.timestamp_begin, size)
    offset = f.seek / sr
    for start, end, piece in pieces:
        text = run.decode_text([t for t in piece if t < run.specials.eot])
        if start == end or not text.strip():
            continue
        f.tokens += [t for t in piece if t < run.specials.eot or t >= run.specials.timestamp_begin]
        seg = {"start": round(offset + start, 2), "end": round(offset + end, 2), "text": text}
        f.segments.append({**seg, **stats})
    f.seek += advance
    if not o.condition_on_previous_text or stats["temperature"] > 0.5:
        f.reset_since = len(f.tokens)


def _finish(run: _Runner, f: _File, name: str) -> dict:
    """``{"text", "segments"}``: segment times clipped to the audio and made monotonic."""
    read = f.samples.total if f.samples.total is not None else f.samples.start + len(f.samples.buf)
    duration = round(read / audio.SAMPLE_RATE, 2)
    prev = 0.0
    for s in f.segments:
        s["start"] = min(max(s["start"], prev), duration)
        s["end"] = prev = min(max(s["end"], s["start"]), duration)
    text = run.decode_text([t for t in f.tokens if t < run.specials.eot]).strip()
    hot = sum(s["temperature"] > 0 for s in f.segments)
    log.info(
        "%s: %.1f s, %d segments (%d from a window decoded at a temperature > 0)",
        name,
        duration,
        len(f.segments),
        hot,
    )
    return {"text": text, "segments": f.segments}


def _take(run: _Runner, f: _File, name: str, ids: list[int], sum_lp: float, no_speech: float) -> None:
    """One decoded window: fall back to the next temperature or accept it."""
    temperature = run.options.temperatures[f.temp_i]
    text = run.decode_text([t for t in ids if t < run.specials.eot]).strip()
    avg_logprob, ratio = sum_lp / (len(ids) + 1), compression_ratio(text)
    stats = {
        "temperature": temperature,
        "avg_logprob": round(avg_logprob, 4),
        "compression_ratio": round(ratio, 4),
        "no_speech_prob": round(no_speech, 4),
    }
    fallback = _needs_fallback(run.options, ratio, avg_logprob, no_speech)
    if fallback and f.temp_i + 1 < len(run.options.temperatures):
        f.temp_i += 1
        log.info(
            "%s: %.2f s window at temperature %g: compression ratio %.2f, average log-prob %.2f; "
            "decoding again at temperature %g",
            name,
            f.seek / audio.SAMPLE_RATE,
            temperature,
            stats["compression_ratio"],
            stats["avg_logprob"],
            run.options.temperatures[f.temp_i],
        )
        return
    _accept(run, f, name, ids, stats, (avg_logprob, no_speech))
    f.window = None


def _load_window(run: _Runner, f: _File) -> bool:
    """Read the file's next window and its log-mel; False when the file is done."""
    f.window = f.samples.window(f.seek, run.window_samples)
    if len(f.window) == 0:
        return False
    c = run.pre.config
    f.mel = audio.log_mel_spectrogram([f.window], n_mels=c.num_mel_bins, padding=c.n_frames * audio.HOP_LENGTH)[0]
    return True


def _open(run: _Runner, load: Callable, i: int, name: str) -> _File:
    """File ``i`` with its first window loaded (``AudioError`` for unreadable or empty input)."""
    source = load(i)
    blocks = iter([source]) if isinstance(source, np.ndarray) else iter(source)
    f = _File(i, _Samples(blocks))
    if not _load_window(run, f):
        raise audio.AudioError(f"{name}: zero-length audio (no samples)")
    return f


def _runner(
    pre: Pretrained,
    params: Any,
    batch_size: int,
    dtype: Any,
    devices: Sequence[Any] | None,
    language: str | None,
    task: str,
    max_new_tokens: int | None,
    options: SequentialOptions,
) -> _Runner:
    """The decoding setup: prompt capacity, generation options, batch rows (a multiple of the devices)."""
    c, specials = pre.config, special_tokens(pre.tokenizer)
    base = len(prompt_ids(specials, language, task, timestamps=True))
    max_prev = min(options.max_previous, c.max_target_positions // 2 - 1)
    capacity = base + (1 + max_prev if max_prev > 0 else 0)
    room = c.max_target_positions - capacity
    cap_new = c.max_target_positions // 2 if max_new_tokens is None else max_new_tokens
    generation = generation_options(
        pre, specials, return_timestamps=True, max_new_tokens=min(cap_new, room), prompt_len=capacity
    )
    devices = list(devices) if devices else jax.local_devices()
    batch = -(-batch_size // len(devices)) * len(devices)
    if params is None:
        params = parallel.replicate(pre.params, parallel.data_mesh(devices)) if len(devices) > 1 else pre.params
    window = round(c.input_seconds * audio.SAMPLE_RATE)
    return _Runner(
        pre=pre,
        params=params,
        dtype=dtype,
        devices=devices,
        specials=specials,
        language=language,
        task=task,
        generation=generation,
        options=dataclasses.replace(options, max_previous=max_prev),
        batch=batch,
        window_samples=window,
        capacity=capacity,
    )


def window_fallback(
    pre: Pretrained,
    *,
    params: Any = None,
    batch_size: int = 8,
    dtype: Any = np.float32,
    devices: Sequence[Any] | None = None,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int | None = None,
    options: SequentialOptions | None = None,
    loops: Callable[[list[int]], bool] | None = None,
) -> Callable[[list[np.ndarray]], list[list[int]]] | None:
    """openai-whisper's temperature fallback for windows decoded on their own, for a caller whose greedy output
    of a window was bad (``--long_form vad``: a piece that loops). The returned function decodes each waveform
    (at most one window) without previous text, at ``options.temperatures`` from the second on, until its output
    passes the checks: ``loops(ids)`` is false, or without ``loops`` openai-whisper's compression-ratio and
    log-probability tests; the last temperature's output stands otherwise, as in openai-whisper. It returns each
    waveform's ids up to EOT (timestamps relative to its start; none when the output looks like silence).
    ``None`` when the options leave no temperature to fall back to. Nothing is compiled until the function is
    first called."""
    options = options or SequentialOptions()
    if len(options.temperatures) < 2:
        return None
    run = _runner(pre, params, batch_size, dtype, devices, language, task, max_new_tokens, options)
    sized = {run.batch: run}  # a few looping pieces run as a few rows (decoding.padded_rows), not a full batch

    def decode(waves: list[np.ndarray]) -> list[list[int]]:
        files = [_File(i, _Samples(iter([w])), temp_i=1) for i, w in enumerate(waves)]
        if not all(_load_window(run, f) for f in files):
            raise ValueError("window_fallback: an empty waveform (expected at least one sample each)")
        out: dict[int, list[int]] = {}
        taken: Counter = Counter()
        while files:
            retry = []
            for b in range(0, len(files), run.batch):
                batch = files[b : b + run.batch]
                k = padded_rows(len(batch), run.batch, len(run.devices))
                step = sized.setdefault(k, dataclasses.replace(run, batch=k)).step
                for f, (ids, sum_lp, no_speech) in zip(batch, step(batch)):
                    avg_logprob, hotter = sum_lp / (len(ids) + 1), f.temp_i + 1 < len(options.temperatures)
                    if loops is not None:
                        bad = loops(ids)
                    else:  # openai-whisper's tests read the text
                        text = run.decode_text([t for t in ids if t < run.specials.eot]).strip()
                        bad = _needs_fallback(options, compression_ratio(text), avg_logprob, no_speech)
                    if hotter and bad:
                        f.temp_i += 1
                        retry.append(f)
                    else:  # what openai-whisper takes as silence gives no text, as in sequential mode
                        out[f.index] = [] if _is_silence(options, avg_logprob, no_speech) else ids
                        taken[options.temperatures[f.temp_i]] += 1
            files = retry
        log.info("temperature fallback: %d window(s) decoded again, taken at temperature %s", len(waves), dict(taken))
        return [out[i] for i in range(len(waves))]

    return decode


def transcribe_files(
    names: Sequence[str],
    load: Callable[[int], np.ndarray | Iterable[np.ndarray]],
    pre: Pretrained,
    *,
    params: Any = None,
    batch_size: int = 8,
    dtype: Any = np.float32,
    devices: Sequence[Any] | None = None,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int | None = None,
    options: SequentialOptions | None = None,
    on_done: Callable[[int], None] | None = None,
    fixed_batch: bool = False,
    stats: dict | None = None,
    progress: bool = False,
) -> list[dict]:
    """One dict per input in order: ``{"file", "text", "segments"}`` or ``{"file", "error"}``. ``load(i)``
    gives input ``i`` as a 16 kHz float32 waveform or an iterable of such blocks (``audio.stream_audio``),
    raising ``audio.AudioError`` for unreadable input. Segments carry openai-whisper's per-window
    ``temperature``, ``avg_logprob``, ``compression_ratio`` and ``no_speech_prob``. ``params``: ``pre``'s
    parameters already placed on ``devices`` (default: placed here); ``on_done(i)`` as input ``i`` finishes.
    Batches have ``batch_size`` rows (rounded up to a multiple of the devices), fewer when there are fewer
    files, unless ``fixed_batch`` (then every call runs the same compiled program). ``stats``, if given, receives
    the counts of windows decoded, of fallbacks and the seconds of audio in the windows decoded. ``progress``:
    a tqdm bar of the seconds of audio transcribed (a single long file otherwise shows no progress)."""
    options = options or SequentialOptions()
    rows = batch_size if fixed_batch else min(batch_size, max(len(names), 1))
    run = _runner(pre, params, rows, dtype, devices, language, task, max_new_tokens, options)
    results: list[dict] = [{"file": str(n)} for n in names]
    pending, active = deque(range(len(names))), []
    counts = stats if stats is not None else {}
    counts.update(windows=0, fallbacks=0, seconds=0.0)
    bar = tqdm(unit="audio-s", desc="sequential", disable=not progress, leave=False)

    def fail(i: int, e: Exception, f: _File | None = None) -> None:
        if f is not None and f.segments:  # damage further into the file: keep what was transcribed before it
            results[i].update(_finish(run, f, str(names[i])), truncated_at=round(f.seek / audio.SAMPLE_RATE, 2))
        results[i]["error"] = str(e)
        if on_done:
            on_done(i)

    while pending or active:
        while pending and len(active) < run.batch:
            i = pending.popleft()
            try:
                active.append(_open(run, load, i, str(names[i])))
            except audio.AudioError as e:
                fail(i, e)
        if not active:
            break
        still = []
        for f, (ids, sum_lp, no_speech) in zip(active, run.step(active)):
            counts["windows"] += 1
            counts["seconds"] += len(f.window) / audio.SAMPLE_RATE
            try:
                before = f.seek
                _take(run, f, str(names[f.index]), ids, sum_lp, no_speech)
                bar.update(round((f.seek - before) / audio.SAMPLE_RATE, 2))
                counts["fallbacks"] += f.window is not None
                if f.window is None and not _load_window(run, f):
                    results[f.index].update(_finish(run, f, str(names[f.index])))
                    if on_done:
                        on_done(f.index)
                    continue
            except audio.AudioError as e:
                fail(f.index, e, f)
                continue
            still.append(f)
        active = still
    bar.close()
    log.info(
        "sequential: %d windows decoded, %d of them again at a higher temperature",
        counts["windows"],
        counts["fallbacks"],
    )
    return results
