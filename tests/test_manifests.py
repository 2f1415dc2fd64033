"""Manifests with quotes in their transcripts: a ``.tsv`` whose text opens a quotation keeps every row, a ``.tsv``
written with quoting (pandas) and a ``.csv`` read right, a malformed row refused with its file and line; read
through ``data.sources`` (what labelling, training and evaluation open) and once through a whole evaluation."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from distil_whisper_jax.data import sources
from distil_whisper_jax.data.spec import DataConfigError, SourceSpec

from .helpers import read_tsv

# Audiobook text: quotations open and close anywhere in a transcript.
QUOTED_TEXTS = ['"Go forward, he said.', 'He said "no" twice.', '"Stop."', "plain, with a comma", '"a ""b"""']


def manifest_rows(path) -> list[dict]:
    """Every row as the data layer streams it (labelling, evaluation) and as it gives it in groups (training)."""
    src = sources.open_source(SourceSpec(str(path)))
    streamed = list(src.rows_from(0))
    groups = src.row_groups()
    grouped = [r for g in range(len(groups.sizes)) for r in groups.read(g, src.columns)]
    assert grouped == streamed
    return streamed


def test_a_tsv_transcript_opening_a_quote_keeps_every_row(tmp_path):
    """An unmatched leading quote used to swallow every following row (csv's default quoting): 4 rows became 1."""
    path = tmp_path / "m.tsv"
    path.write_text(
        "audio\ttext\n"
        'a.wav\t"Hello, he said. And then he left.\n'
        "b.wav\tSecond row.\n"
        'c.wav\tShe said "yes" and "no".\n'
        'd.wav\t"Stop."\n',
        encoding="utf-8",
    )
    assert manifest_rows(path) == [
        {"audio": "a.wav", "text": '"Hello, he said. And then he left.'},
        {"audio": "b.wav", "text": "Second row."},
        {"audio": "c.wav", "text": 'She said "yes" and "no".'},
        {"audio": "d.wav", "text": '"Stop."'},
    ]


def test_a_tsv_written_by_pandas_with_quotes_inside_fields_reads_right(tmp_path):
    """pandas quotes a field holding a quote and doubles the quotes inside: that quoting is undone, nothing else."""
    rows = [{"audio": f"{i}.wav", "text": t, "speaker": "s"} for i, t in enumerate(QUOTED_TEXTS)]
    path = tmp_path / "pandas.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    assert '"""Stop."""' in path.read_text()  # pandas did quote
    assert manifest_rows(path) == rows


def test_a_csv_manifest_with_commas_and_quotes_reads_right(tmp_path):
    rows = [{"audio": f"{i}.wav", "text": t} for i, t in enumerate(QUOTED_TEXTS)]
    path = tmp_path / "m.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["audio", "text"])
        w.writeheader()
        w.writerows(rows)
    assert manifest_rows(path) == rows


def test_our_tsv_writer_round_trips_every_text(tmp_path):
    """``write_tsv_rows`` (the demo's evaluation subsets) quotes only what the reader would otherwise unquote."""
    from distil_whisper_jax.infra import delimited

    texts = [*QUOTED_TEXTS, '""', '"', '"x""y"', "", "ünïcødé"]
    rows = [{"audio": f"{i}.wav", "text": t} for i, t in enumerate(texts)]
    delimited.write_tsv_rows(tmp_path / "w.tsv", ["audio", "text"], rows)
    assert manifest_rows(tmp_path / "w.tsv") == rows
    with pytest.raises(ValueError, match="cannot hold a tab"):
        delimited.write_tsv_rows(tmp_path / "bad.tsv", ["audio", "text"], [{"audio": "a", "text": "x\ty"}])
    assert not (tmp_path / "bad.tsv").exists()


@pytest.mark.parametrize(
    "name, text, where",
    [
        (
            "tab.tsv",
            'audio\ttext\na.wav\tfine\nb.wav\t"a\tb"\n',
            r"tab.tsv:3: 3 tab-separated fields, the header has",
        ),
        ("short.tsv", "audio\ttext\na.wav\n", r"short.tsv:2: 1 tab-separated fields, the header has 2"),
        ("open.csv", 'audio,text\na.wav,"Hello, he said.\nb.wav,x\n', r"open.csv:2: unexpected end of data"),
        ("spans.csv", 'audio,text\na.wav,"Hello,\nhe said."\nb.wav,x\n', r"spans.csv:2-3: one row spans 2 lines"),
    ],
)
def test_a_malformed_manifest_is_refused_at_open_naming_file_and_line(tmp_path, name, text, where):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataConfigError, match=rf"--dataset_name .*{where}"):
        sources.open_source(SourceSpec(str(tmp_path / name)))


def test_eval_scores_every_row_of_a_tsv_whose_first_transcript_opens_a_quote(clips, tiny, tmp_path, monkeypatch):
    """End to end on four bundled clips: the first reference opens a quotation it never closes. Before, the
    rows after it were swallowed into that reference: 1 row scored, 81 % WER."""
    from distil_whisper_jax.stages.evaluate import evaluation

    monkeypatch.setattr(evaluation, "load_pretrained", lambda path=None, flag="": tiny)
    picked = clips[:4]
    texts = ['"' + picked[0][1]] + [t for _, t in picked[1:]]
    lines = ["audio\ttext"] + [f"{p}\t{t}" for (p, _), t in zip(picked, texts)]
    manifest = tmp_path / "quoted.tsv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(read_tsv(manifest)) == 4
    out = tmp_path / "eval"
    cfg = evaluation.EvalConfig(
        dataset_name=str(manifest), output_dir=str(out), per_device_eval_batch_size=2, num_local_devices=1
    )
    assert evaluation.run(cfg) == 0
    overall = json.loads((out / "results.json").read_text())["overall"]
    assert overall["num_samples"] == overall["scored"] == 4
    assert overall["wer"] < 10, overall
