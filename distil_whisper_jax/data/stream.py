"""Training-side data: labelled datasets → static-shape batches, with an O(1)-resumable position.

Datasets are opened by ``data`` (any source it knows that offers random access: the labeller's Parquet
output, Parquet shards, manifests, ``save_to_disk`` and cached hub datasets). Here:

* Each epoch visits a source's rows in a seeded permutation (row groups shuffled, then rows within a
  group), so a position is just ``(epoch, cursor)`` per source; ``StreamState`` (plain ints, JSON)
  is saved in every checkpoint and resuming costs one row-group read.
* Several sources are mixed like the original's ``interleave_datasets``: draw ``d`` picks source ``k``
  with probability ∝ ``--train_dataset_samples`` from ``rng(seed, d)``. A source that runs out starts
  its next epoch (never stalls, never stops the others).
* Every process walks the same stream of cheap metadata (text, ids, duration, WER) and builds the
  same global batch of labels, but decodes audio only for its own slice of the batch. Per-example
  randomness (timestamp / previous-text choices) is seeded by the example's identity, so the batch
  is the same for any process or device count.
* Rows are filtered before they reach a batch: by duration (the ``duration`` column, else the audio
  file's header, so a clip too long for Whisper's window never aborts a run), by the shared WER rule
  (``wer_filter``: the ``wer`` column, else computed from the ground truth), and by label length.
* Labels follow the original recipe: decoder prompt, timestamps kept with probability
  ``timestamp_probability`` else stripped, ``<|startofprev|>`` + previous text with probability
  ``condition_on_prev_probability``, EOT; over-long labels dropped (or truncated on request).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from distil_whisper_jax.core.losses import IGNORE_INDEX
from distil_whisper_jax.data import sources as data
from distil_whisper_jax.data import wer_filter
from distil_whisper_jax.data.row_audio import audio_duration, row_audio
from distil_whisper_jax.data.row_language import row_language
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import SpecialTokens, prompt_ids

log = logging.getLogger(__name__)
IGNORE = IGNORE_INDEX  # label of positions the loss skips


# ----------------------------------------------------------------------------------------------
# Sources


def open_sources(names: str, split: str | None = None) -> list[data.Source]:
    """Open ``+``-joined training (or evaluation) datasets; each must offer random access and hold rows.
    ``split`` picks a split of hub / ``save_to_disk`` datasets and of Parquet shards named by split."""
    sources = data.open_sources(data.parse_sources(names, None, split))
    for src in sources:
        if not sum(src.row_groups().sizes):
            raise data.DataConfigError(f"{src.label}: dataset has no rows")
    return sources


class RowReader:
    """Random access to a source's rows, one row group cached (the stream reads groups in order)."""

    def __init__(self, src: data.Source, columns: Sequence[str]):
        self.src, self.groups = src, src.row_groups()
        self.columns = list(dict.fromkeys(c for c in columns if c is not None and c in src.columns))
        self._key: int | None = None
        self._rows: list[dict] = []

    def group(self, g: int) -> list[dict]:
        if self._key != g:
            self._rows, self._key = self.groups.read(g, self.columns), g
        return self._rows


def load_row_audio(value: Any, src: data.Source, where: str) -> np.ndarray:
    """16 kHz float32 audio of an audio cell (🤗 Audio struct or a path relative to the dataset directory);
    errors name the dataset row."""
    try:
        return row_audio(value, src.base_dir)
    except audio.AudioError as e:
        raise audio.AudioError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Labels


@dataclasses.dataclass(frozen=True)
class LabelOptions:
    max_label_length: int = 128  # tokens of prompt + target + EOT
    timestamp_probability: float = 0.5
    condition_on_prev_probability: float = 0.0
    truncate: bool = False  # over-long targets: False = drop the row (original), True = cut (no EOT)
    language: str | None = None
    task: str = "transcribe"


def strip_timestamps(ids: Sequence[int], specials: SpecialTokens) -> list[int]:
    return [t for t in ids if t < specials.timestamp_begin]


def build_sequence(
    target: Sequence[int],
    previous: Sequence[int] | None,
    specials: SpecialTokens,
    opts: LabelOptions,
    rng: np.random.Generator,
) -> list[int] | None:
    """Full decoder token sequence ``[<|startofprev|> prev…] <|sot|> [lang task] [<|notimestamps|>] text <|eot|>``.

    ``target``: the teacher's ids after its prompt (EOT excluded), possibly with timestamps; or a complete
    prompted sequence starting with SOT / SOP, taken verbatim. Returns None when the target alone does not
    fit in ``max_label_length`` and ``opts.truncate`` is off (the original drops such rows).
    Two random draws per example, always in the same order, so a seeded ``rng`` makes this deterministic.
    """
    u_ts, u_prev = rng.random(), rng.random()
    target = list(target)
    if target and target[0] in (specials.sot, specials.startofprev):
        seq = target + ([] if target[-1] == specials.eot else [specials.eot])
        return seq if len(seq) <= opts.max_label_length else (seq[: opts.max_label_length] if opts.truncate else None)
    has_ts = any(t >= specials.timestamp_begin for t in target)
    keep_ts = has_ts and u_ts < opts.timestamp_probability
    if not keep_ts:
        target = strip_timestamps(target, specials)
    rest = prompt_ids(specials, opts.language, opts.task, timestamps=keep_ts) + target + [specials.eot]
    if len(rest) > opts.max_label_length:
        if not opts.truncate:
            return None
        rest = rest[: opts.max_label_length]
    prev: list[int] = []
    if previous is not None and len(previous) and u_prev < opts.condition_on_prev_probability:
        p = [t for t in previous if t < specials.eot or t >= specials.timestamp_begin]
        if not keep_ts:
            p = strip_timestamps(p, specials)
        room = min(opts.max_label_length // 2 - 1, opts.max_label_length - len(rest) - 1)
        if p and room > 0:
            prev = [specials.startofprev] + p[-room:]
    return prev + rest


def sequence_to_arrays(seq: Sequence[int], width: int, specials: SpecialTokens) -> tuple[np.ndarray, np.ndarray]:
    """(decoder_input_ids, labels) of length ``width`` from a full sequence (teacher forcing: inputs are
    ``seq[:-1]``, labels ``seq[1:]``). Padding and every label before the SOT are ``IGNORE`` (previous
    text is context, never a target; the SOT itself is predicted from it)."""
    seq = np.asarray(seq, np.int32)
    n = len(seq) - 1
    if n > width:
        raise ValueError(f"sequence of {len(seq)} tokens does not fit {width} positions")
    inputs = np.full(width, specials.eot, np.int32)
    labels = np.full(width, IGNORE, np.int32)
    inputs[:n], labels[:n] = seq[:-1], seq[1:]
    sot_pos = int(np.argmax(seq == specials.sot)) if (seq == specials.sot).any() else 0
    labels[: max(sot_pos - 1, 0)] = IGNORE
    return inputs, labels


# ----------------------------------------------------------------------------------------------
# Stream


@dataclasses.dataclass
class StreamState:
    """Position of the training stream (plain ints: saved as JSON in each checkpoint)."""

    draws: int = 0  # examples drawn from the mixture (kept or filtered)
    batches: int = 0
    epochs: list[int] = dataclasses.field(default_factory=list)  # per source
    cursors: list[int] = dataclasses.field(default_factory=list)  # rows consumed in the current epoch
    filtered: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> rows skipped

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StreamState:
        return cls(
            **{k: (dict(v) if k == "filtered" else (list(v) if isinstance(v, list) else int(v))) for k, v in d.items()}
        )


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """How the training stream reads its sources. A field set by a flag carries that flag's name
    (``audio_column_name`` ↔ ``--audio_column_name``), so an error names the flag as the user typed it."""

    audio_column_name: str | None = None  # None: the column the dataset records (labelled output), else "audio"
    train_text_column_name: str = "whisper_transcript"
    ids_column: str = "whisper_token_ids"  # used instead of re-tokenising the text column when present
    prev_column: str = "condition_on_prev"
    reference_column: str | None = None  # ground truth for the WER filter; None: recorded, else "text"
    min_duration_in_seconds: float = 0.0
    max_duration_in_seconds: float = 30.0
    wer_threshold: float | None = None
    keep_rows_without_ground_truth: bool = False
    labels: LabelOptions = LabelOptions()
    languages: tuple[str | None, ...] = ()  # each source's language (--language '+'-joined); () for none
    language_column_name: str | None = None  # each row's language; None: the column the dataset records


@dataclasses.dataclass(frozen=True)
class Columns:
    """The columns of one source that the stream reads (resolved from the options and the source's roles)."""

    audio: str
    reference: str | None
    text: str
    ids: str
    prev: str
    language: str | None = None

    @classmethod
    def resolve(cls, src: data.Source, o: DataOptions) -> Columns:
        return cls(
            audio=src.column_for("audio", o.audio_column_name, "audio"),
            reference=src.column_for("text", o.reference_column, "text"),
            text=o.train_text_column_name,
            ids=o.ids_column,
            prev=o.prev_column,
            language=src.column_for("language", o.language_column_name, None),
        )

    def check(self, src: data.Source, o: DataOptions) -> None:
        """``DataConfigError`` naming the flag for a column the run needs and the source lacks."""
        data.require_columns(src, {"audio_column_name": self.audio}, " for training (the audio the teacher heard)")
        data.require_columns(src, {"language_column_name": o.language_column_name})
        if self.text not in src.columns and self.ids not in src.columns:
            data.require_columns(src, {"train_text_column_name": self.text}, " for training (the pseudo-labels)")
        if o.wer_threshold is not None and "wer" not in src.columns and not o.keep_rows_without_ground_truth:
            data.require_columns(
                src,
                {"wer_threshold": self.reference},
                " by --wer_threshold (a 'wer' column or the ground truth to compute it)",
            )


@dataclasses.dataclass
class Example:
    key: tuple[int, int]  # (source, row): identifies the audio (encoder-output cache key)
    sequence: list[int]
    audio_cell: Any
    source: int


def _epoch_order(sizes: Sequence[int], seed: int, k: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Row groups in this epoch's order and the cumulative row counts along it."""
    rng = np.random.default_rng([seed, 17, k, epoch])
    order = rng.permutation(len(sizes))
    return order, np.cumsum([sizes[g] for g in order])


class TrainStream:
    """Deterministic, resumable stream of filtered, labelled examples from several sources."""

    def __init__(
        self,
        sources: Sequence[data.Source],
        weights: Sequence[float] | None,
        tokenizer: Any,
        specials: SpecialTokens,
        opts: DataOptions,
        seed: int,
        state: StreamState | None = None,
    ):
        if not sources:
            raise ValueError("no training datasets given")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"--train_dataset_samples must give one non-negative weight per dataset "
                f"({len(sources)}), not all zero; got {weights}"
            )
        self.sources, self.tok, self.sp, self.opts, self.seed = list(sources), tokenizer, specials, opts, seed
        self.probs = np.asarray(weights) / sum(weights)
        self.columns = [Columns.resolve(s, opts) for s in self.sources]
        for s, c in zip(self.sources, self.columns):
            c.check(s, opts)
        self.readers = [
            RowReader(s, [c.text, c.ids, c.prev, "duration", "wer", c.audio, c.reference, c.language])
            for s, c in zip(self.sources, self.columns)
        ]
        self.sizes = [r.groups.sizes for r in self.readers]
        self.num_rows = [sum(z) for z in self.sizes]
        self.state = state or StreamState()
        if not self.state.epochs:
            self.state.epochs, self.state.cursors = [0] * len(sources), [0] * len(sources)
        if len(self.state.epochs) != len(sources):
            raise ValueError(f"saved data position has {len(self.state.epochs)} datasets, this run has {len(sources)}")
        self._orders: list[tuple] = [(-1, None, None)] * len(sources)  # (epoch, group order, cumulative rows)
        self._perm: list[tuple] = [(None, None)] * len(sources)  # ((epoch, group), row permutation)
        self._offsets = [np.concatenate([[0], np.cumsum(z)]) for z in self.sizes]
        self._durations = [np.full(n, np.nan) for n in self.num_rows]  # durations from audio headers
        for k, s in enumerate(self.sources):
            if "duration" not in s.columns:  # e.g. a TSV manifest: filter by duration before training starts
                self._scan_durations(k)
        self._kept_in_epoch = [0] * len(sources)
        self._seen_whole_epoch = [st == 0 for st in self.state.cursors]  # for the "all rows filtered" check

    # -- rows ---------------------------------------------------------------------------------
    def _next_epoch(self, k: int) -> None:
        st = self.state
        if self._seen_whole_epoch[k] and self._kept_in_epoch[k] == 0:
            raise ValueError(
                f"{self.sources[k].label}: all {self.num_rows[k]} rows were filtered out in a whole epoch "
                f"(skipped so far: {st.filtered}); relax the filters"
            )
        st.epochs[k] += 1
        st.cursors[k] = 0
        self._kept_in_epoch[k], self._seen_whole_epoch[k] = 0, True
        log.info("dataset %s: starting epoch %d", self.sources[k].label, st.epochs[k])

    def _row(self, k: int) -> tuple[int, dict]:
        """Next row of source ``k`` (advancing its cursor, wrapping to a new epoch); (row id, row)."""
        st = self.state
        if st.cursors[k] >= self.num_rows[k]:
            self._next_epoch(k)
        c, epoch = st.cursors[k], st.epochs[k]
        if self._orders[k][0] != epoch:
            self._orders[k] = (epoch, *_epoch_order(self.sizes[k], self.seed, k, epoch))
        _, order, cum = self._orders[k]
        j = int(np.searchsorted(cum, c, side="right"))
        g = int(order[j])
        if self._perm[k][0] != (epoch, g):
            perm = np.random.default_rng([self.seed, 29, k, epoch, g]).permutation(self.sizes[k][g])
            self._perm[k] = ((epoch, g), perm)
        r = int(self._perm[k][1][c - (int(cum[j - 1]) if j else 0)])
        st.cursors[k] += 1
        return int(self._offsets[k][g]) + r, self.readers[k].group(g)[r]

    def _skip(self, reason: str) -> None:
        self.state.filtered[reason] = self.state.filtered.get(reason, 0) + 1

    def _scan_durations(self, k: int) -> None:
        """Read every row's duration from its audio header (a source without a ``duration`` column)."""
        log.info("dataset %s has no duration column: reading %d audio headers", self.sources[k].label, self.num_rows[k])
        reader, audio_col = self.readers[k], self.columns[k].audio
        for g in range(len(self.sizes[k])):
            for r, row in enumerate(reader.groups.read(g, [audio_col])):
                self._duration(k, int(self._offsets[k][g]) + r, row)

    def _duration(self, k: int, row_id: int, row: dict) -> float:
        """The row's ``duration`` cell, else the length its audio header gives (read once per row and kept)."""
        if row.get("duration") is not None:
            return float(row["duration"])
        if np.isnan(self._durations[k][row_id]):
            cell = row.get(self.columns[k].audio)
            try:
                self._durations[k][row_id] = audio_duration(cell, self.sources[k].base_dir)
            except audio.AudioError as e:
                raise audio.AudioError(f"{self.sources[k].label} row {row_id}: {e}") from None
        return float(self._durations[k][row_id])

    def _transcript(self, k: int, row: dict) -> str | None:
        c = self.columns[k]
        if row.get(c.text) is not None:
            return row[c.text]
        ids = row.get(c.ids)
        return None if ids is None else self.tok.decode(ids, skip_special_tokens=True)

    def _wer_drop(self, k: int, row: dict) -> str | None:
        """Why the shared WER rule drops the row (None: kept); the ``wer`` cell when there is one."""
        o = self.opts
        if o.wer_threshold is None:
            return None
        ref = row.get(self.columns[k].reference) if self.columns[k].reference else None
        transcript = self._transcript(k, row)
        w = row.get("wer")  # the labeller's score: it had the ground truth
        has_ref = w is not None or wer_filter.has_ground_truth(ref)
        if w is None:
            w, _, _ = wer_filter.row_wer(ref, transcript, self.language(k, row))
        keep = o.keep_rows_without_ground_truth
        return wer_filter.drop_reason(has_ref, transcript is not None, w, o.wer_threshold, keep)

    def language(self, k: int, row: dict) -> str | None:
        """The row's language: its language column, else its dataset's --language, else --language."""
        o = self.opts
        default = (o.languages[k] if o.languages else None) or o.labels.language
        return row_language(row, self.columns[k].language, default, self.sp)

    def label_counts(self) -> dict[int, int]:
        """How often each token id occurs in the training labels of every row of every source (the filters are
        not applied): the student's vocabulary in use, ranked for a draft shortlist. Reads only the label
        columns."""
        counts = np.zeros(0, np.int64)
        for k, src in enumerate(self.sources):
            c = self.columns[k]
            groups = src.row_groups()
            cols = [x for x in dict.fromkeys((c.text, c.ids)) if x in src.columns]
            for g in range(len(groups.sizes)):
                ids = [t for row in groups.read(g, cols) for t in (self._target(k, row) or ())]
                group = np.bincount(np.asarray(ids, np.int64), minlength=len(counts))
                counts = np.pad(counts, (0, len(group) - len(counts))) + group
        return {int(t): int(n) for t, n in enumerate(counts) if n}

    def _target(self, k: int, row: dict) -> list[int] | None:
        c = self.columns[k]
        if c.text == "whisper_transcript" and row.get(c.ids) is not None:
            return list(row[c.ids])
        text = row.get(c.text)
        if text is None:
            return None
        return list(self.tok.encode(text, add_special_tokens=False))

    def _draw_source(self) -> int:
        d = self.state.draws
        self.state.draws += 1
        if len(self.sources) == 1:
            return 0
        return int(np.random.default_rng([self.seed, 7, d]).choice(len(self.sources), p=self.probs))

    def next_example(self) -> Example:
        """The next example that passes every filter (rows that fail are counted in ``state.filtered``)."""
        o = self.opts
        while True:
            k = self._draw_source()
            row_id, row = self._row(k)
            epoch = self.state.epochs[k]
            if not o.min_duration_in_seconds <= self._duration(k, row_id, row) <= o.max_duration_in_seconds:
                self._skip("duration")
                continue
            reason = self._wer_drop(k, row)
            if reason is not None:
                self._skip(reason)
                continue
            target = self._target(k, row)
            if not target:
                self._skip("empty_label")
                continue
            rng = np.random.default_rng([self.seed, 11, k, epoch, row_id])
            labels = dataclasses.replace(o.labels, language=self.language(k, row))
            seq = build_sequence(target, row.get(self.columns[k].prev), self.sp, labels, rng)
            if seq is None:
                self._skip("label_too_long")
                continue
            self._kept_in_epoch[k] += 1
            return Example((k, row_id), seq, row.get(self.columns[k].audio), k)

    def next_batch(self, batch_size: int) -> list[Example]:
        out = [self.next_example() for _ in range(batch_size)]
        self.state.batches += 1
        return out


# ----------------------------------------------------------------------------------------------
# Features and collation


def example_audio(ex: Example, sources: Sequence[data.Source], opts: DataOptions) -> np.ndarray:
    src = sources[ex.source]
    wav = load_row_audio(ex.audio_cell, src, f"{src.label} row {ex.key[1]}")
    if len(wav) > audio.N_SAMPLES:
        raise ValueError(
            f"{src.label} row {ex.key[1]}: {len(wav) / audio.SAMPLE_RATE:.1f} s of audio is longer "
            "than Whisper's 30 s window (filter it with --max_duration_in_seconds)"
        )
    return wav


def features(
    examples: Sequence[Example],
    sources: Sequence[data.Source],
    opts: DataOptions,
    n_mels: int,
    n_frames: int = audio.N_FRAMES,
) -> np.ndarray:
    """Log-mel features [len(examples), n_mels, n_frames] (decodes each example's audio); ``n_frames`` is the
    teacher's input (3000 = 30 s), a shorter-context student takes the first frames of these."""
    waves = [example_audio(e, sources, opts) for e in examples]
    return audio.log_mel_spectrogram(waves, n_mels=n_mels, padding=n_frames * audio.HOP_LENGTH)


def collate_labels(examples: Sequence[Example], width: int, specials: SpecialTokens) -> dict[str, np.ndarray]:
    """``decoder_input_ids`` and ``labels`` int32 [B, width]: teacher-forcing inputs and shifted targets."""
    pairs = [sequence_to_arrays(e.sequence, width, specials) for e in examples]
    return {"decoder_input_ids": np.stack([p[0] for p in pairs]), "labels": np.stack([p[1] for p in pairs])}


def process_slice(n: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous share of a global batch of ``n`` (which must divide evenly)."""
    if n % process_count:
        raise ValueError(f"global batch {n} is not divisible by {process_count} processes")
    per = n // process_count
    return slice(process_index * per, (process_index + 1) * per)


def split_plus(value: str | None) -> list[str]:
    """The original's '+'-joined lists."""
    return [] if not value else [v.strip() for v in value.split("+") if v.strip()]


def weights_from_flag(value: str | None, n: int) -> list[float] | None:
    if not value:
        return None
    parts = split_plus(value)
    if len(parts) != n:
        raise ValueError(f"--train_dataset_samples has {len(parts)} entries but --train_dataset_name has {n}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--train_dataset_samples: expected '+'-joined numbers, got {value!r}") from None
