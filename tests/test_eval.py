"""run_eval.py on the real tiny.en and real speech: corpus WER per dataset and overall (S/D/I counted by hand;
a run's figure recomputed from its predictions.csv), results.json / results.md / predictions.csv, empty
references and unreadable rows counted, the multi-host split and merge, bad input refused before work, and
speculative decoding reachable from transcribe and eval.

Every run shares one loaded tiny.en and one compiled shape (batches of 2 on one device)."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import jax
import pytest

from distil_whisper_jax.assets import bundled_clips, speech_manifest
from distil_whisper_jax.cli import transcribe as tr_cli
from distil_whisper_jax.cli.eval import main
from distil_whisper_jax.decode import transcribe as tr
from distil_whisper_jax.decode.decoding import decoder
from distil_whisper_jax.speech.wer import normalizer_for
from distil_whisper_jax.stages.evaluate import evaluation, report
from distil_whisper_jax.weights import loading

from . import fake_gcs
from .helpers import read_tsv, write_tsv

HELDOUT = speech_manifest("heldout")
ONE = dict(per_device_eval_batch_size=2, num_local_devices=1)
ONE_ARGV = ["--per_device_eval_batch_size", "2", "--num_local_devices", "1"]


def heldout_rows(*numbers: int) -> list[dict]:
    rows = read_tsv(HELDOUT)
    return [rows[n - 1] for n in numbers]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """A: three rows, the second's audio missing (unreadable); B: two rows, the second's reference empty. Two
    references are edited so that the rows score differently (two words the speaker did not say: 2 deletions; one
    word changed: 1 substitution) and the corpus WER (errors over all words) differs from the rows' mean WER."""
    d = tmp_path_factory.mktemp("eval-data")
    (d / "flac").mkdir()
    a = heldout_rows(2, 3, 6)
    b = heldout_rows(7, 8)
    for r in a + b:
        shutil.copy(HELDOUT.parent / r["audio"], d / r["audio"])
    a[1]["audio"] = "flac/missing.flac"
    b[1]["text"] = ""
    a[0]["text"] += " Truly, indeed."  # "…until we cried. Truly, indeed."
    b[0]["text"] = b[0]["text"].replace("great", "grand")
    return write_tsv(d / "a.tsv", a), write_tsv(d / "b.tsv", b)


@pytest.fixture(scope="module", autouse=True)
def shared_model(tiny):
    """``load_pretrained`` gives the session's tiny.en for the bundled model (no reload per run)."""
    real = loading.load_pretrained
    bundled = str(loading.default_model_dir())

    def load(path=None, flag=""):
        return tiny if path is None or str(path) == bundled else real(path, flag)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluation, "load_pretrained", load)
        yield


def cfg_for(manifests, out, **kw) -> evaluation.EvalConfig:
    a, b = manifests
    return evaluation.EvalConfig(dataset_name=f"{a}+{b}", output_dir=str(out), **{**ONE, **kw})


@pytest.fixture(scope="module")
def evaluated(manifests, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out")
    assert evaluation.run(cfg_for(manifests, out, predictions_csv=True)) == 0
    return out, json.loads((out / "results.json").read_text())


def test_wer_counts_by_hand_on_normalised_text_and_pooled_over_the_corpus():
    """Counts written out by hand (not recomputed with jiwer, which wer.py itself calls). English normaliser:
    lower case, punctuation dropped, brackets dropped, "it's" -> "it is", spoken numbers -> digits,
    British -> American spelling.

    row  reference                     prediction                  normalised ref / hyp                    S D I words
    0    "The cat sat on the mat."     "the cat sat on a mat"      the cat sat on the / ... on a mat       1 0 0 6
    1    "Two dogs barked loudly"      "2 dogs barked"             2 dogs barked loudly / 2 dogs barked    0 1 0 4
    2    ""                            "noise"                     empty reference: not scored
    3    "[noise]"                     "words"                     empty after normalisation: not scored
    4    "It's raining."               "It is raining now"         it is raining / it is raining now       0 0 1 3
    5    "The colour of the theatre!"  "the color of the theater"  the color of the theater (both)         0 0 0 5
    6    "I have 2 cats"               "I have two cats"           i have 2 cats (both)                    0 0 0 4
    7    "Hello, World!"               ""                          hello world / (empty)                   0 2 0 2
    8    "x"                           not transcribed             unreadable: not scored
    total                                                                                                  1 3 1 24
    hits = 24 - 1 - 3 = 20; pooled WER = (1+3+1)/24 = 20.83 %, while the mean of the six per-row WERs would be
    (1/6+1/4+1/3+0+0+1)/6 = 29.17 %."""
    pairs = [
        ("The cat sat on the mat.", "the cat sat on a mat"),
        ("Two dogs barked loudly", "2 dogs barked"),
        ("", "noise"),
        ("[noise]", "words"),
        ("It's raining.", "It is raining now"),
        ("The colour of the theatre!", "the color of the theater"),
        ("I have 2 cats", "I have two cats"),
        ("Hello, World!", ""),
    ]
    entries = [
        {"dataset": 0, "row": i, "reference": r, "prediction": h, "audio_seconds": 1.0}
        for i, (r, h) in enumerate(pairs)
    ]
    entries.append({"dataset": 0, "row": 8, "reference": "x", "prediction": None, "error": "x: no such audio file"})
    st, rows = report.score_dataset(entries, normalizer_for("en"))
    assert [(r["reference_normalised"], r["prediction_normalised"]) for r in rows] == [
        ("the cat sat on the mat", "the cat sat on a mat"),
        ("2 dogs barked loudly", "2 dogs barked"),
        ("", "noise"),
        ("", "words"),
        ("it is raining", "it is raining now"),
        ("the color of the theater", "the color of the theater"),
        ("i have 2 cats", "i have 2 cats"),
        ("hello world", ""),
        (None, None),
    ]
    counts = ("substitutions", "deletions", "insertions", "hits", "reference_words")
    assert tuple(st[k] for k in counts) == (1, 3, 1, 20, 24)
    assert (st["num_samples"], st["scored"], st["empty_references"], st["unreadable"]) == (9, 6, 2, 1)
    assert st["wer"] == pytest.approx(100 * 5 / 24)
    per_row = [100 / 6, 25.0, None, None, 100 / 3, 0.0, 0.0, 100.0, None]
    assert [r["wer"] for r in rows] == [None if w is None else pytest.approx(w) for w in per_row]
    # overall over datasets: "a b" / "a" is 1 deletion in 2 words (50 %); an all-empty dataset has no WER and
    # adds nothing. Pooled: 6 errors / 26 words = 23.08 %, not the mean of the datasets' WERs (35.42 %).
    empty, _ = report.score_dataset(
        [{"dataset": 1, "row": 0, "reference": " ", "prediction": "a"}], normalizer_for("en")
    )
    small, _ = report.score_dataset(
        [{"dataset": 2, "row": 0, "reference": "a b", "prediction": "a"}], normalizer_for("en")
    )
    assert empty["wer"] is None and "undefined" in empty["note"] and small["wer"] == pytest.approx(50.0)
    total = report.overall({n: dict(d, seconds=1.0) for n, d in (("x", st), ("e", empty), ("s", small))})
    assert tuple(total[k] for k in counts) == (1, 4, 1, 21, 26)
    assert total["wer"] == pytest.approx(100 * 6 / 26)


def test_results_per_dataset_and_overall(manifests, evaluated):
    out, res = evaluated
    a, b = (str(m) for m in manifests)
    assert list(res["datasets"]) == [a, b]
    da, db = res["datasets"][a], res["datasets"][b]
    assert (da["num_samples"], da["scored"], da["unreadable"], da["empty_references"]) == (3, 2, 1, 0)
    assert (db["num_samples"], db["scored"], db["unreadable"], db["empty_references"]) == (2, 1, 0, 1)
    for d in (da, db, res["overall"]):
        assert set(d) >= {"wer", "substitutions", "insertions", "deletions", "num_samples", "audio_seconds"}
        assert set(d) >= {"seconds", "rtf", "empty_references", "unreadable"}
        assert d["substitutions"] + d["deletions"] + d["hits"] == d["reference_words"]
        assert 0 <= d["wer"] < 30 and d["audio_seconds"] > 0 and d["rtf"] > 0
    for key in ("num_samples", "scored", "substitutions", "deletions", "insertions", "reference_words"):
        assert res["overall"][key] == da[key] + db[key]
    assert da["audio_seconds"] == pytest.approx(2.5658 + 2.2059, abs=0.01)  # the unreadable row adds nothing
    # predictions.csv: every row, the normalised texts, per-utterance WER; the corpus WER is errors over words
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["row"]) for r in rows] == [(a, "0"), (a, "1"), (a, "2"), (b, "0"), (b, "1")]
    assert "missing.flac" in rows[1]["error"] and rows[1]["prediction"] == "" and rows[1]["wer"] == ""
    assert rows[4]["reference"] == "" and rows[4]["prediction"] and rows[4]["wer"] == ""
    scored = [r for r in rows if r["wer"] != ""]
    for r in scored:
        assert r["reference_normalised"] == normalizer_for("en")(r["reference"]).strip()
    # from the rows alone, without a WER library: each row's errors are its WER × its reference words, and the
    # corpus WER is their sum over all words (not the mean of the rows' WERs)
    words = [len(r["reference_normalised"].split()) for r in scored]
    errors = sum(float(r["wer"]) / 100 * n for r, n in zip(scored, words))
    o = res["overall"]
    assert sum(words) == o["reference_words"] == 30
    assert (o["substitutions"], o["deletions"], o["insertions"]) == (1, 2, 0)  # the two edited references
    assert errors == pytest.approx(o["substitutions"] + o["deletions"] + o["insertions"], abs=0.01)
    assert o["wer"] == pytest.approx(100 * errors / sum(words), abs=0.01)
    md = (out / "results.md").read_text()
    assert a in md and "**overall**" in md and f"{res['overall']['wer']:.2f}" in md
    assert "assistant" not in res and res["config"]["dataset_name"] == f"{a}+{b}"


def test_two_processes_split_the_rows_and_process_0_merges(manifests, evaluated, tmp_path, monkeypatch):
    """``run`` as process 1 then process 0 of 2 (one block per row, so the rows alternate): process 1 writes its
    part, process 0 merges it with its own rows into the single-process results."""
    _, single = evaluated
    real_setup = evaluation.setup

    def setup(cfg):
        s = real_setup(cfg)
        s.block_rows = 1
        return s

    monkeypatch.setattr(evaluation, "setup", setup)
    monkeypatch.setattr(evaluation.multihost_utils, "sync_global_devices", lambda name: None)
    cfg = cfg_for(manifests, tmp_path, predictions_csv=True)
    monkeypatch.setattr(evaluation.data_blocks, "process_info", lambda: (1, 2))
    assert evaluation.run(cfg) == 0
    assert not (tmp_path / "results.json").exists()
    header, theirs = report.read_part(report.part_path(tmp_path, 1))
    assert [(e["dataset"], e["row"]) for e in theirs] == [(0, 1), (1, 1)]
    monkeypatch.setattr(evaluation.data_blocks, "process_info", lambda: (0, 2))
    assert evaluation.run(cfg) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    timing = ("seconds", "rtf")
    for name in single["datasets"]:
        got, want = merged["datasets"][name], single["datasets"][name]
        assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in want.items() if k not in timing}
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as f:
        assert [r["row"] for r in csv.DictReader(f)] == ["0", "1", "2", "0", "1"]
    # a part of another run (different settings) is not merged
    report.write_part(tmp_path, 1, dict(header, run={"other": 1}), theirs)
    with pytest.raises(TimeoutError, match=r"process\(es\) \[1\]"):
        report.wait_for_parts(tmp_path, 2, evaluation.run_key(cfg), skip=0, timeout=0.6)


def test_missing_text_column_is_refused_before_any_work(manifests, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluation, "load_pretrained", lambda *a: pytest.fail("model loaded before the check"))
    a, _ = manifests
    argv = ["--dataset_name", str(a), "--text_column_name", "transcript", "--output_dir", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'transcript'" in err and "--text_column_name" in err and str(a) in err
    assert not (tmp_path / "r").exists()


def test_speculative_with_the_teacher_drafting_for_itself(tiny, clips, manifests, evaluated, tmp_path, caplog):
    files = [str(p) for p, _ in clips[:3]]
    one = jax.local_devices()[:1]
    plain = tr.transcribe(files, tiny, batch_size=2, devices=one, progress=False)
    with caplog.at_level(logging.INFO, logger="distil_whisper_jax.decode.transcribe"):
        spec = tr.transcribe(files, tiny, batch_size=2, assistant_model=tiny, progress=False)
    assert [r["text"] for r in spec] == [r["text"] for r in plain]
    assert "accepted (100.0 %)" in caplog.text
    # in eval: the same predictions as greedy decoding, acceptance 100 %, counts in results.json
    out = tmp_path / "spec"
    cfg = cfg_for(manifests, out, predictions_csv=True, assistant_model_name_or_path=str(loading.default_model_dir()))
    assert evaluation.run(cfg) == 0
    res = json.loads((out / "results.json").read_text())
    a = res["assistant"]
    assert a["acceptance_rate"] == 1.0 and a["accepted_tokens"] == a["drafted_tokens"] > 0
    assert (out / "predictions.csv").read_text() == (evaluated[0] / "predictions.csv").read_text()
    assert "100.0 %" in (out / "results.md").read_text()


def test_assistant_that_cannot_draft_is_refused(tiny, clips, manifests, tmp_path, capsys):
    other = loading.Pretrained(
        tiny.config.replace(vocab_size=tiny.config.vocab_size + 1), tiny.params, "other", None, "ct2"
    )
    with pytest.raises(ValueError, match=r"--assistant_model other: vocab_size"):
        tr.transcribe([str(clips[0][0])], tiny, assistant_model=other, progress=False)
    with pytest.raises(ValueError, match=r"--assistant_model_name_or_path other: vocab_size"):
        decoder(tiny, assistant=other, assistant_flag="--assistant_model_name_or_path")
    with pytest.raises(ValueError, match="--assistant_model: speculative decoding is greedy"):
        tr.transcribe([str(clips[0][0])], tiny, assistant_model=tiny, num_beams=2, progress=False)
    a, _ = manifests
    argv = ["--dataset_name", str(a), "--output_dir", str(tmp_path), "--assistant_model_name_or_path", "x"]
    assert main([*argv, "--num_beams", "2"]) == 2
    assert "--assistant_model_name_or_path: speculative decoding is greedy" in capsys.readouterr().err
    assert tr_cli.main([str(clips[0][0]), "--assistant_model", "x", "--num_beams", "2"]) == 2
    assert "--assistant_model: speculative decoding is greedy" in capsys.readouterr().err


def test_long_rows_are_counted_short_form_and_scored_with_long_form_chunked_and_sequential(tiny, tmp_path):
    clips = {p.name: (p, t) for p, t in bundled_clips(max_seconds=None)}
    rows = [clips["piper_moon_long.flac"], clips["goforward.wav"]]  # 42 s (two windows) and 2.8 s
    manifest = write_tsv(tmp_path / "long.tsv", [{"audio": str(p), "text": t} for p, t in rows])
    short, chunk = tmp_path / "short", tmp_path / "chunked"
    assert evaluation.run(evaluation.EvalConfig(dataset_name=str(manifest), output_dir=str(short), **ONE)) == 0
    d = json.loads((short / "results.json").read_text())["datasets"][str(manifest)]
    assert (d["num_samples"], d["scored"], d["too_long"], d["unreadable"]) == (2, 1, 1, 0)
    cfg = evaluation.EvalConfig(
        dataset_name=str(manifest), output_dir=str(chunk), long_form="chunked", predictions_csv=True, **ONE
    )
    assert evaluation.run(cfg) == 0
    d = json.loads((chunk / "results.json").read_text())["datasets"][str(manifest)]
    assert (d["num_samples"], d["scored"], d["too_long"]) == (2, 2, 0) and d["wer"] < 10
    assert d["audio_seconds"] == pytest.approx(42.03 + 2.79, abs=0.01)
    with open(chunk / "predictions.csv", newline="", encoding="utf-8") as f:
        predicted = [r["prediction"] for r in csv.DictReader(f)]
    files = [str(p) for p, _ in rows]
    direct = tr.transcribe(files, tiny, batch_size=2, long_form="chunked", devices=jax.local_devices()[:1])
    assert predicted == [r["text"] for r in direct]
    seq = tmp_path / "sequential"
    cfg = evaluation.EvalConfig(dataset_name=str(manifest), output_dir=str(seq), long_form="sequential", **ONE)
    assert evaluation.run(cfg) == 0
    d = json.loads((seq / "results.json").read_text())["datasets"][str(manifest)]
    assert (d["num_samples"], d["scored"], d["too_long"]) == (2, 2, 0) and d["wer"] < 10


def test_results_go_to_a_bucket_url(manifests, evaluated, tmp_path):
    """``--output_dir gs://...`` (the GCS stand-in): the same results and predictions reach the bucket; a
    bucket that does not exist is refused before the model loads."""
    gcs = fake_gcs.use(tmp_path / "gcs")
    assert evaluation.run(cfg_for(manifests, "gs://bucket/ev", predictions_csv=True)) == 0
    local, res = evaluated
    remote = tmp_path / "gcs" / "bucket" / "ev"
    got = json.loads((remote / "results.json").read_text())
    assert got["datasets"].keys() == res["datasets"].keys()
    for name in res["datasets"]:
        same = ("wer", "num_samples", "scored", "substitutions", "deletions", "insertions")
        assert {k: got["datasets"][name][k] for k in same} == {k: res["datasets"][name][k] for k in same}
    assert (remote / "predictions.csv").read_text() == (local / "predictions.csv").read_text()
    assert {"bucket/ev/results.json", "bucket/ev/results.md", "bucket/ev/predictions.csv"} <= set(gcs.written)
    with pytest.raises(ValueError, match="--output_dir gs://nobucket/ev: cannot write there"):
        cfg_for(manifests, "gs://nobucket/ev").validate()


def test_a_run_without_predictions_removes_an_earlier_runs_predictions_csv(evaluated, tmp_path):
    """Eval into an existing --output_dir replaces every file a run owns: predictions.csv from an earlier run
    with --predictions_csv must not stand beside results it does not belong to."""
    _, results = evaluated
    names = list(results["datasets"])
    assert report.write_results(tmp_path, results, [], names) == []
    assert (tmp_path / "predictions.csv").is_file()
    assert report.write_results(tmp_path, results, None, names) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]
