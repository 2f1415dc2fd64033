"""Training-side data: labelled datasets → static-shape batches, with an O(1)-resumable position.

The original re-streamed (and re-featurised) every skipped example on resume and built the whole
global batch on every host. Here:

* A **source** is one labelled dataset: its Parquet files (contract B, ``run_pseudo_label.py``'s
  output, a hub dataset's Parquet shards) or a TSV/CSV manifest (contract A). Rows are addressed by
  (row group, offset), so reading row ``i`` of an epoch touches one row group only.
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
* Labels follow the original (upstream.md §2.2): decoder prompt, timestamps kept with probability
  ``timestamp_probability`` else stripped, ``<|startofprev|>`` + previous text with probability
  ``condition_on_prev_probability``, EOT; over-long labels dropped (or truncated on request).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import audio
from .losses import IGNORE_INDEX
from .tokenizer import SpecialTokens

log = logging.getLogger(__name__)
IGNORE = IGNORE_INDEX  # label of positions the loss skips


# ----------------------------------------------------------------------------------------------
# Sources


@dataclasses.dataclass
class Source:
    """One dataset: where its rows live and how many rows each row group holds."""

    name: str  # as the user gave it (for messages)
    files: list[Path]
    groups: list[tuple[int, int, int]]  # (file index, row group index, rows)
    columns: list[str]
    root: Path  # relative audio paths are resolved against this
    table: Any = None  # a whole in-memory pyarrow table (TSV/CSV manifests)

    @property
    def num_rows(self) -> int:
        return sum(n for _, _, n in self.groups)


def _parquet_files(name: str, split: str | None) -> tuple[list[Path], Path]:
    p = Path(name).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.parquet")) or sorted(p.rglob("*.parquet"))
        if split and len(files) > 1:
            in_split = [f for f in files if split in f.relative_to(p).as_posix()]
            files = in_split or files
        if not files:
            raise ValueError(
                f"{name}: directory holds no .parquet files (expected the output of "
                "run_pseudo_label.py or a dataset's Parquet shards)"
            )
        return files, p
    if p.is_file():
        return [p], p.parent
    matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(name)))
    if matches:
        return matches, matches[0].parent
    from .utils import is_hub_id

    if is_hub_id(name):
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(name, repo_type="dataset", allow_patterns=["*.parquet", "**/*.parquet"]))
        except Exception as e:  # offline, unknown repo, auth
            raise ValueError(
                f"{name}: could not get the dataset's Parquet files from the 🤗 hub or cache "
                f"({type(e).__name__}: {e}); pass a local directory instead"
            ) from None
        return _parquet_files(str(local), split)
    raise ValueError(f"{name}: no such dataset directory, Parquet file or manifest (and not a hub dataset id)")


def open_source(name: str, split: str | None = None) -> Source:
    """Open a labelled dataset: a directory of Parquet files (contract B), a ``.parquet`` file or glob,
    a ``.tsv``/``.csv`` manifest (contract A: ``audio`` paths relative to it), or a hub dataset id
    (its Parquet shards whose path contains ``split``)."""
    p = Path(name).expanduser()
    if p.suffix.lower() in (".tsv", ".csv") and p.is_file():
        import pyarrow as pa

        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ","))
        if not rows:
            raise ValueError(f"{p}: manifest has no rows")
        table = pa.Table.from_pylist(rows)
        return Source(name, [p], [(0, 0, len(rows))], list(rows[0]), p.parent, table)
    import pyarrow.parquet as pq

    files, root = _parquet_files(name, split)
    groups, columns = [], None
    for i, f in enumerate(files):
        try:
            meta = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for truncated or foreign files
            raise ValueError(f"{f}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        cols = meta.schema_arrow.names
        if columns is None:
            columns = cols
        elif set(cols) != set(columns):
            raise ValueError(f"{f}: columns {sorted(cols)} differ from {files[0]}'s {sorted(columns)}")
        groups += [
            (i, g, meta.metadata.row_group(g).num_rows)
            for g in range(meta.num_row_groups)
            if meta.metadata.row_group(g).num_rows
        ]
    src = Source(name, files, groups, columns or [], root)
    if not src.num_rows:
        raise ValueError(f"{name}: dataset has no rows")
    return src


def require_columns(src: Source, needed: Iterable[str], why: str) -> None:
    missing = [c for c in needed if c not in src.columns]
    if missing:
        raise ValueError(f"{src.name}: missing column(s) {missing} needed {why}; it has {sorted(src.columns)}")


class RowReader:
    """Random access to a source's rows, one row group cached (the stream reads groups in order)."""

    def __init__(self, src: Source, columns: Sequence[str] | None = None):
        self.src, self.columns = src, [c for c in (columns or src.columns) if c in src.columns]
        self._key, self._rows = None, None

    def group(self, g: int) -> list[dict]:
        if self._key != g:
            fi, rg, _ = self.src.groups[g]
            if self.src.table is not None:
                self._rows = self.src.table.select(self.columns).to_pylist()
            else:
                import pyarrow.parquet as pq

                try:
                    self._rows = pq.ParquetFile(self.src.files[fi]).read_row_group(rg, columns=self.columns).to_pylist()
                except Exception as e:
                    raise ValueError(
                        f"{self.src.files[fi]}: cannot read row group {rg} ({type(e).__name__}: {e})"
                    ) from None
            self._key = g
        return self._rows


def load_row_audio(value: Any, src: Source, where: str) -> np.ndarray:
    """16 kHz float32 audio of an audio cell (``data.row_audio``: 🤗 Audio struct or a path relative to the
    dataset directory); errors name the dataset row."""
    from .data import row_audio

    try:
        return row_audio(value, src.root)
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
    from .tokenizer import prompt_ids

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
    audio_column: str = "audio"
    text_column: str = "whisper_transcript"
    ids_column: str = "whisper_token_ids"  # used instead of re-tokenising the text column when present
    prev_column: str = "condition_on_prev"
    min_duration: float = 0.0
    max_duration: float = 30.0
    wer_threshold: float | None = None
    drop_without_ground_truth: bool = False
    labels: LabelOptions = LabelOptions()


@dataclasses.dataclass
class Example:
    key: tuple[int, int]  # (source, row): identifies the audio (encoder-output cache key)
    sequence: list[int]
    audio_cell: Any
    source: int


def _epoch_order(src: Source, seed: int, k: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Row groups in this epoch's order and the cumulative row counts along it."""
    rng = np.random.default_rng([seed, 17, k, epoch])
    order = rng.permutation(len(src.groups))
    return order, np.cumsum([src.groups[g][2] for g in order])


class TrainStream:
    """Deterministic, resumable stream of filtered, labelled examples from several sources."""

    def __init__(
        self,
        sources: Sequence[Source],
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
        for s in self.sources:
            require_columns(s, [opts.audio_column], "for training (the audio the teacher heard)")
            if opts.text_column not in s.columns and opts.ids_column not in s.columns:
                require_columns(s, [opts.text_column], "for training (--train_text_column_name: the pseudo-labels)")
            if opts.wer_threshold is not None and "wer" not in s.columns:
                require_columns(s, ["wer"], "by --wer_threshold (run_pseudo_label.py writes it)")
        meta_cols = [opts.text_column, opts.ids_column, opts.prev_column, "duration", "wer", opts.audio_column]
        self.readers = [RowReader(s, meta_cols) for s in self.sources]
        self.state = state or StreamState()
        if not self.state.epochs:
            self.state.epochs, self.state.cursors = [0] * len(sources), [0] * len(sources)
        if len(self.state.epochs) != len(sources):
            raise ValueError(f"saved data position has {len(self.state.epochs)} datasets, this run has {len(sources)}")
        self._orders: list[tuple] = [(-1, None, None)] * len(sources)  # (epoch, group order, cumulative rows)
        self._perm: list[tuple] = [(None, None)] * len(sources)  # ((epoch, group), row permutation)
        self._offsets = [np.concatenate([[0], np.cumsum([n for _, _, n in s.groups])]) for s in self.sources]
        self._kept_in_epoch = [0] * len(sources)
        self._seen_whole_epoch = [st == 0 for st in self.state.cursors]  # for the "all rows filtered" check

    # -- rows ---------------------------------------------------------------------------------
    def _row(self, k: int) -> tuple[int, dict]:
        """Next row of source ``k`` (advancing its cursor, wrapping to a new epoch); (row id, row)."""
        src, st = self.sources[k], self.state
        if st.cursors[k] >= src.num_rows:
            if self._seen_whole_epoch[k] and self._kept_in_epoch[k] == 0:
                raise ValueError(
                    f"{src.name}: all {src.num_rows} rows were filtered out in a whole epoch "
                    f"(skipped so far: {st.filtered}); relax the filters"
                )
            st.epochs[k] += 1
            st.cursors[k] = 0
            self._kept_in_epoch[k], self._seen_whole_epoch[k] = 0, True
            log.info("dataset %s: starting epoch %d", src.name, st.epochs[k])
        c, epoch = st.cursors[k], st.epochs[k]
        if self._orders[k][0] != epoch:
            self._orders[k] = (epoch, *_epoch_order(src, self.seed, k, epoch))
        _, order, cum = self._orders[k]
        j = int(np.searchsorted(cum, c, side="right"))
        g = int(order[j])
        if self._perm[k][0] != (epoch, g):
            self._perm[k] = (
                (epoch, g),
                np.random.default_rng([self.seed, 29, k, epoch, g]).permutation(src.groups[g][2]),
            )
        r = int(self._perm[k][1][c - (int(cum[j - 1]) if j else 0)])
        st.cursors[k] += 1
        return int(self._offsets[k][g]) + r, self.readers[k].group(g)[r]

    def _skip(self, reason: str) -> None:
        self.state.filtered[reason] = self.state.filtered.get(reason, 0) + 1

    def _target(self, row: dict, where: str) -> list[int] | None:
        o = self.opts
        if o.text_column == "whisper_transcript" and row.get(o.ids_column) is not None:
            return list(row[o.ids_column])
        text = row.get(o.text_column)
        if text is None:
            return None
        return list(self.tok.encode(text, add_special_tokens=False))

    def next_example(self) -> Example:
        """The next example that passes every filter (rows that fail are counted in ``state.filtered``)."""
        o = self.opts
        while True:
            d = self.state.draws
            self.state.draws += 1
            k = (
                int(np.random.default_rng([self.seed, 7, d]).choice(len(self.sources), p=self.probs))
                if len(self.sources) > 1
                else 0
            )
            row_id, row = self._row(k)
            epoch = self.state.epochs[k]
            where = f"{self.sources[k].name} row {row_id}"
            dur = row.get("duration")
            if dur is not None and not (o.min_duration <= float(dur) <= o.max_duration):
                self._skip("duration")
                continue
            if o.wer_threshold is not None:
                w = row.get("wer")
                if w is None:
                    if o.drop_without_ground_truth:
                        self._skip("no_ground_truth")
                        continue
                elif not float(w) < o.wer_threshold:
                    self._skip("wer")
                    continue
            target = self._target(row, where)
            if not target:
                self._skip("empty_label")
                continue
            rng = np.random.default_rng([self.seed, 11, k, epoch, row_id])
            prev = row.get(o.prev_column)
            seq = build_sequence(target, prev, self.sp, o.labels, rng)
            if seq is None:
                self._skip("label_too_long")
                continue
            self._kept_in_epoch[k] += 1
            return Example((k, row_id), seq, row.get(o.audio_column), k)

    def next_batch(self, batch_size: int) -> list[Example]:
        out = [self.next_example() for _ in range(batch_size)]
        self.state.batches += 1
        return out


# ----------------------------------------------------------------------------------------------
# Features and collation


def example_audio(ex: Example, sources: Sequence[Source], opts: DataOptions) -> np.ndarray:
    src = sources[ex.source]
    wav = load_row_audio(ex.audio_cell, src, f"{src.name} row {ex.key[1]}")
    if len(wav) > audio.N_SAMPLES:
        raise ValueError(
            f"{src.name} row {ex.key[1]}: {len(wav) / audio.SAMPLE_RATE:.1f} s of audio is longer "
            "than Whisper's 30 s window (filter it with --max_duration_in_seconds)"
        )
    return wav


def features(examples: Sequence[Example], sources: Sequence[Source], opts: DataOptions, n_mels: int) -> np.ndarray:
    """Log-mel features [len(examples), n_mels, 3000] (decodes each example's audio)."""
    return audio.log_mel_spectrogram([example_audio(e, sources, opts) for e in examples], n_mels=n_mels)


def collate_labels(examples: Sequence[Example], width: int, specials: SpecialTokens) -> dict[str, np.ndarray]:
    """``decoder_input_ids`` and ``labels`` int32 [B, width] (contract C)."""
    pairs = [sequence_to_arrays(e.sequence, width, specials) for e in examples]
    return {"decoder_input_ids": np.stack([p[0] for p in pairs]), "labels": np.stack([p[1] for p in pairs])}


def process_slice(n: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous share of a global batch of ``n`` (which must divide evenly)."""
    if n % process_count:
        raise ValueError(f"global batch {n} is not divisible by {process_count} processes")
    per = n // process_count
    return slice(process_index * per, (process_index + 1) * per)


# ----------------------------------------------------------------------------------------------
# Evaluation sets


@dataclasses.dataclass
class EvalSet:
    name: str
    features: np.ndarray  # [N, n_mels, 3000]
    texts: list[str]


def load_eval_set(
    name: str,
    split: str | None,
    audio_column: str,
    text_column: str,
    n_mels: int,
    max_samples: int | None = None,
    max_duration: float = 30.0,
) -> EvalSet:
    """All rows of an evaluation dataset (in order) with their reference texts and features."""
    src = open_source(name, split)
    require_columns(src, [audio_column, text_column], "for evaluation (--eval_text_column_name: the reference)")
    reader = RowReader(src, [audio_column, text_column])
    waves, texts = [], []
    for g in range(len(src.groups)):
        for i, row in enumerate(reader.group(g)):
            if max_samples is not None and len(texts) >= max_samples:
                break
            wav = load_row_audio(row[audio_column], src, f"{name} row {len(texts)}")
            if len(wav) > max_duration * audio.SAMPLE_RATE:
                continue
            waves.append(wav)
            texts.append(row[text_column] or "")
    if not texts:
        raise ValueError(f"{name}: no evaluation rows (after the {max_duration} s duration limit)")
    return EvalSet(name, audio.log_mel_spectrogram(waves, n_mels=n_mels), texts)


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
