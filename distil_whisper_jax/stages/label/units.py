"""What the teacher labels: a unit is one clip, a pack of consecutive clips, or a piece of a long clip.

Input rows are decoded to 16 kHz int16 (``decoded_units``; unusable rows become ``Bad`` items that are
counted, or fail the run under ``--strict``), optionally packed up to the duration limit (``pack``), and
long clips are cut at quiet points (``split_long``). ``continues`` says whether a unit follows another
directly, so the earlier one's labels may prompt it (``condition_on_prev``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from distil_whisper_jax.data.row_audio import row_audio
from distil_whisper_jax.data.row_language import row_language
from distil_whisper_jax.data.sources import Source
from distil_whisper_jax.decode import vad_pieces
from distil_whisper_jax.speech import audio as audio_lib
from distil_whisper_jax.speech.token_layout import SpecialTokens
from distil_whisper_jax.stages.label.config import PseudoLabelConfig

log = logging.getLogger(__name__)


class PseudoLabelError(RuntimeError):
    """A bad input under ``--strict``, or an output directory that belongs to a different run."""


@dataclasses.dataclass
class Unit:
    audio: np.ndarray  # int16 16 kHz mono
    row: dict  # input columns (of the first row), audio column excluded
    text: str | None  # ground truth, None when unknown
    speaker: Any
    rows: list[int]  # global input row indices
    part: int = 0  # piece index of a long clip
    pieces: int = 1  # number of pieces the clip was cut into (1: not cut)
    language: str = "en"  # Whisper language code: the teacher's prompt and the WER normaliser

    @property
    def duration(self) -> float:
        return len(self.audio) / audio_lib.SAMPLE_RATE


@dataclasses.dataclass
class Bad:
    row: int
    source: str
    reason: str


def quantize(x: np.ndarray) -> np.ndarray:
    """float audio → int16 as 16-bit PCM stores it (soundfile reads it back as ``q / 32768``)."""
    return np.clip(np.round(np.asarray(x, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def split_long(
    x: np.ndarray, max_len: int, search: int = 5 * audio_lib.SAMPLE_RATE, frame: int = 1600
) -> list[np.ndarray]:
    """Cut ``x`` into pieces of at most ``max_len`` samples, each cut at the quietest 0.1 s frame of the
    last ``search`` samples before the limit (so words are rarely split)."""
    pieces, start = [], 0
    while len(x) - start > max_len:
        lo = start + max(max_len - search, frame)
        window = np.abs(x[lo : start + max_len].astype(np.float32))
        n = len(window) // frame
        energy = window[: n * frame].reshape(n, frame).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        pieces.append(x[start:cut])
        start = cut
    pieces.append(x[start:])
    return pieces


def split_at_pauses(x: np.ndarray, max_len: int, source: str, row: int) -> list[np.ndarray]:
    """Cut int16 ``x`` into pieces of at most ``max_len`` samples that cover it, at the pauses the VAD finds
    (``vad_pieces.plan`` keeping the silence); speech without a pause for longer than that is cut and logged."""
    plan = vad_pieces.plan_probabilities(
        vad_pieces.default_vad().probabilities(x.astype(np.float32) / 32768.0), max_len, keep_silence=True
    )
    for c in plan.split:
        log.warning("row %d of %s: speech without a pause longer than %d samples; cut at %d", row, source, max_len, c)
    return [x[s:e] for s, e in (vad_pieces.samples_of(p, len(x)) for p in plan.pieces)]


def pack(units: Iterable[Unit | Bad], max_len: int, by_speaker: bool) -> Iterator[Unit | Bad]:
    """Greedily join consecutive units while the total stays ≤ ``max_len`` samples; a new pack starts at
    a speaker change (``by_speaker``), a gap in the input rows (a bad row), or a piece of a long clip.
    Texts are joined with a space (None if any member lacks ground truth). ``Bad`` items pass through."""
    cur: list[Unit] = []

    def flush() -> Iterator[Unit]:
        if cur:
            if len(cur) == 1:
                yield cur[0]
            else:
                texts = [u.text for u in cur]
                text = None if any(t is None for t in texts) else " ".join(t.strip() for t in texts)
                yield Unit(
                    np.concatenate([u.audio for u in cur]),
                    cur[0].row,
                    text,
                    cur[0].speaker,
                    [r for u in cur for r in u.rows],
                    language=cur[0].language,
                )
            cur.clear()

    for u in units:
        if isinstance(u, Bad):
            yield from flush()
            yield u
            continue
        joinable = (
            cur
            and u.pieces == 1
            and cur[-1].pieces == 1
            and u.rows[0] == cur[-1].rows[-1] + 1
            and (not by_speaker or u.speaker == cur[0].speaker)
            and u.language == cur[0].language
            and sum(len(c.audio) for c in cur) + len(u.audio) <= max_len
        )
        if not joinable:
            yield from flush()
        if u.pieces > 1:  # pieces of long clips stand alone
            yield u
        else:
            cur.append(u)
    yield from flush()


def continues(prev: Unit | None, u: Unit, by_speaker: bool, contiguous_rows: bool) -> bool:
    """Does ``u`` directly continue ``prev`` (so ``prev``'s labels can prompt it)? Pieces of one clip always
    do; consecutive rows do when the speaker matches (``by_speaker``) or rows are contiguous by design
    (``contiguous_rows``: concatenation without a speaker column)."""
    if prev is None:
        return False
    if u.part > 0:
        return prev.rows == u.rows and prev.part == u.part - 1
    if u.rows[0] != prev.rows[-1] + 1:
        return False
    return (u.speaker == prev.speaker) if by_speaker else contiguous_rows


def decoded_units(
    rows: Iterator[tuple[int, int, dict]],
    cfg: PseudoLabelConfig,
    sources: Sequence[Source],
    columns: Sequence[str],
    languages: Sequence[str | None] = (),
    specials: SpecialTokens | None = None,
) -> Iterator[Unit | Bad]:
    """Units of the input rows (a long clip: its pieces, or a ``Bad`` item under ``--long_audio skip``, or for
    a row whose language the teacher does not know); ``languages``: each source's ``--language``."""
    a = cfg
    text_col, spk_col = a.text_column, a.speaker_id_column_name
    max_len = int(round(a.max_duration_in_seconds * audio_lib.SAMPLE_RATE))
    for gi, k, row in rows:
        src = sources[k]
        try:
            default = (languages[k] if languages else None) or "en"
            lang = row_language(row, a.language_column_name, default, specials) if specials else default
        except ValueError as e:
            if a.strict:
                raise PseudoLabelError(f"row {gi} of {src.label}: {e} (--strict)") from e
            yield Bad(gi, src.label, f"--language_column_name {a.language_column_name}: {e}")
            continue
        try:
            if "__error__" in row:
                raise audio_lib.AudioError(row["__error__"])
            wav = quantize(row_audio(row.get(a.audio_column_name), src.base_dir))
            if len(wav) > max_len and a.long_audio == "skip":
                raise audio_lib.AudioError(
                    f"{_audio_name(row.get(a.audio_column_name))}: {len(wav) / 16000:.1f} s "
                    f"is longer than {a.max_duration_in_seconds:g} s (--long_audio chunk "
                    "labels it in pieces)"
                )
        except audio_lib.AudioError as e:
            if a.strict:
                raise PseudoLabelError(f"row {gi} of {src.label}: {e} (--strict)") from e
            yield Bad(gi, src.label, str(e))
            continue
        text = row.get(text_col) if text_col else None
        text = text if isinstance(text, str) and text.strip() else None
        kept = {c: row.get(c) for c in columns if c != a.audio_column_name}
        speaker = row.get(spk_col) if spk_col else None
        if len(wav) > max_len:
            pieces = split_long(wav, max_len) if a.long_audio != "vad" else split_at_pauses(wav, max_len, src.label, gi)
            for j, piece in enumerate(pieces):
                yield Unit(piece, kept, None, speaker, [gi], j, len(pieces), lang)
        else:
            yield Unit(wav, kept, text, speaker, [gi], language=lang)


def _audio_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "<audio bytes>")
    return str(value)


def bad_kind(reason: str) -> str:
    """A short category for a bad-input message (for the report's counts)."""
    r = reason.lower()
    for key, kind in (
        ("longer than", "too_long"),
        ("no such", "missing_file"),
        ("cell is empty", "missing_audio"),
        ("neither a path", "missing_audio"),
        ("0 bytes", "empty_file"),
        ("zero-length", "zero_length"),
        ("non-finite", "non_finite"),
        ("json", "bad_manifest_line"),
        ("truncated", "truncated"),
        ("decodable", "undecodable"),
        ("cannot read", "undecodable"),
        ("can read", "undecodable"),
        ("directory", "missing_file"),
        ("language", "unknown_language"),
    ):
        if key in r:
            return kind
    return "other"


# ----------------------------------------------------------------------------------------------------------------
# generation batches


@dataclasses.dataclass(frozen=True)
class Batcher:
    """How a block's rows become generation batches: which rows, which columns, what batch shape."""

    cfg: PseudoLabelConfig
    sources: Sequence[Source]
    columns: Sequence[str]  # input columns written (common to all sources), audio column included
    batch_size: int  # static global batch of the compiled generation
    n_mels: int
    n_frames: int = audio_lib.N_FRAMES  # the model's input length (1500 for a 750-position model)
    languages: Sequence[str | None] = ()  # each source's --language
    specials: SpecialTokens | None = None  # the teacher's special tokens (to check row languages)

    def features(self, units: list[Unit]) -> np.ndarray:
        """Log-mel of a batch, filled up to the static batch size with copies of its last row: a filler row
        then stops decoding when a real one does (silence may never emit EOT and would run to the cap)."""
        waves = [u.audio.astype(np.float32) / 32768.0 for u in units]
        mel = audio_lib.log_mel_spectrogram(waves, n_mels=self.n_mels, padding=self.n_frames * audio_lib.HOP_LENGTH)
        return np.concatenate([mel, np.repeat(mel[-1:], self.batch_size - len(units), axis=0)])

    def block_items(self, b: int, rows: Iterator[tuple[int, int, dict]]) -> Iterator[tuple]:
        """``("batch", b, units, mel)`` items of one block, then ``("end", b, rows_read, bads)``."""
        cfg = self.cfg
        counter = {"rows": 0}

        def counted() -> Iterator[tuple[int, int, dict]]:
            for item in rows:
                counter["rows"] += 1
                yield item

        units: Iterable[Unit | Bad] = decoded_units(
            counted(), cfg, self.sources, self.columns, self.languages, self.specials
        )
        if cfg.concatenate_audio:
            max_len = int(round(cfg.max_duration_in_seconds * audio_lib.SAMPLE_RATE))
            units = pack(units, max_len, by_speaker=cfg.speaker_id_column_name is not None)
        bads: list[Bad] = []
        batch: list[Unit] = []
        for u in units:
            if isinstance(u, Bad):
                bads.append(u)
                continue
            batch.append(u)
            if len(batch) == self.batch_size:
                yield "batch", b, batch, self.features(batch)
                batch = []
        if batch:
            yield "batch", b, batch, self.features(batch)
        yield "end", b, counter["rows"], bads

    def items(self, blocks: Iterator[tuple[int, Iterator]]) -> Iterator[tuple]:
        """Every owned block's items, in block order (run in the prefetch thread)."""
        for b, rows in blocks:
            yield from self.block_items(b, rows)
