"""What an evaluation writes: scores per dataset and overall, the per-process parts of a multi-host run and
their merge, ``results.json``, ``results.md`` and ``predictions.csv``.

A row of the evaluation is a plain dict (``entry``): ``dataset`` (index), ``row`` (index in that dataset),
``id``, ``reference``, ``prediction`` (None when the row was not transcribed), ``error`` and
``audio_seconds``. Scores are corpus-level: a dataset's WER is its substitutions + deletions + insertions
over its reference words (``evaluate.wer_details`` on normalised text), and the overall WER adds up the
errors and words of every dataset (not a mean of the datasets' WERs). Rows whose normalised reference is empty
are counted (``empty_references``) and not scored; rows that were not transcribed (unreadable audio, or
longer than the model's input without ``--long_form``) are counted and not scored.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.files import atomic_write, write_error
from distil_whisper_jax.speech.wer import wer_details

log = logging.getLogger(__name__)
PARTS_DIR = ".parts"
POLL_SECONDS = 0.5
TOO_LONG = "longer than the model's"  # the short-form path's message for a row that does not fit the input
COUNTS = ("substitutions", "deletions", "insertions", "hits", "reference_words")
CSV_COLUMNS = (
    "dataset",
    "row",
    "id",
    "reference",
    "prediction",
    "reference_normalised",
    "prediction_normalised",
    "wer",
    "error",
)


# ----------------------------------------------------------------------------------------------------------------
# scores


def _wer(errors: int, words: int) -> float | None:
    return 100.0 * errors / words if words else None


def score_dataset(
    entries: Sequence[dict], normalize: Callable[[str], str], by_language: Callable | None = None
) -> tuple[dict, list[dict]]:
    """Counts and corpus WER of one dataset's rows, and the rows with their normalised texts and WER. With
    ``by_language`` (language → normaliser), a row that records its ``language`` is normalised for it."""
    scored, rows = [], []
    st = {"num_samples": len(entries), "unreadable": 0, "too_long": 0, "empty_references": 0, "audio_seconds": 0.0}
    for e in entries:
        row = dict(e, reference_normalised=None, prediction_normalised=None, wer=None)
        rows.append(row)
        if e.get("prediction") is None:
            st["too_long" if TOO_LONG in (e.get("error") or "") else "unreadable"] += 1
            continue
        st["audio_seconds"] += e.get("audio_seconds") or 0.0
        norm = by_language(e["language"]) if by_language and e.get("language") else normalize
        ref = " ".join(norm(e.get("reference") or "").split())
        hyp = " ".join(norm(e["prediction"]).split())
        row.update(reference_normalised=ref, prediction_normalised=hyp)
        if not ref:
            st["empty_references"] += 1
            continue
        row["wer"] = wer_details([ref], [hyp], normalize=False).wer
        scored.append((ref, hyp))
    st["scored"] = len(scored)
    if scored:
        d = wer_details([r for r, _ in scored], [h for _, h in scored], normalize=False)
        st.update({k: getattr(d, k) for k in COUNTS})
    else:
        st.update(dict.fromkeys(COUNTS, 0))
    st["wer"] = _wer(st["substitutions"] + st["deletions"] + st["insertions"], st["reference_words"])
    if st["wer"] is None:
        st["note"] = "no row with a non-empty reference was transcribed: WER undefined"
    return st, rows


def overall(per_dataset: dict[str, dict]) -> dict:
    """Totals over datasets; the WER is total errors over total reference words."""
    keys = ("num_samples", "scored", "unreadable", "too_long", "empty_references", *COUNTS)
    out: dict[str, Any] = {k: sum(d[k] for d in per_dataset.values()) for k in keys}
    out["audio_seconds"] = sum(d["audio_seconds"] for d in per_dataset.values())
    out["seconds"] = sum(d["seconds"] for d in per_dataset.values())
    out["rtf"] = out["seconds"] / out["audio_seconds"] if out["audio_seconds"] else None
    out["wer"] = _wer(out["substitutions"] + out["deletions"] + out["insertions"], out["reference_words"])
    if out["wer"] is None:
        out["note"] = "no dataset has a scored row: WER undefined"
    return out


def score(
    entries: Sequence[dict],
    names: Sequence[str],
    seconds: Sequence[float],
    normalize: Callable[[str], str],
    by_language: Callable | None = None,
) -> tuple[dict, list[dict]]:
    """``{"datasets": {name: stats}, "overall": stats}`` and every row (dataset order, then row order) with
    its normalised texts and WER. ``seconds[k]``: wall time spent on dataset ``k``. When rows record their
    ``language``, they are normalised for it (``by_language``) and ``"languages": {code: stats}`` is added."""
    by_dataset: list[list[dict]] = [[] for _ in names]
    for e in sorted(entries, key=lambda e: (e["dataset"], e["row"])):
        by_dataset[e["dataset"]].append(e)
    per, rows = {}, []
    for k, name in enumerate(names):
        st, r = score_dataset(by_dataset[k], normalize, by_language)
        st["seconds"] = seconds[k]
        st["rtf"] = seconds[k] / st["audio_seconds"] if st["audio_seconds"] else None
        per[name] = st
        rows += r
    results = {"datasets": per, "overall": overall(per)}
    languages = sorted({e["language"] for e in entries if e.get("language")})
    if languages:
        results["languages"] = {}
        for lang in languages:
            st, _ = score_dataset([e for e in entries if e.get("language") == lang], normalize, by_language)
            results["languages"][lang] = {k: st[k] for k in ("num_samples", "scored", "reference_words", "wer")}
    return results, rows


# ----------------------------------------------------------------------------------------------------------------
# multi-host parts


def part_path(out: str | Path, process_index: int) -> Path:
    return storage.location(out) / PARTS_DIR / f"process_{process_index}.jsonl"


def write_part(out: str | Path, process_index: int, header: dict, entries: Sequence[dict]) -> Path:
    """A process's rows (first line: its ``header``), written atomically."""
    path = part_path(out, process_index)
    with atomic_write(path, "w") as f:
        f.write(json.dumps({"header": header}, ensure_ascii=False) + "\n")
        for e in entries:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    return path


def read_part(path: storage.OutPath) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[0]["header"], lines[1:]


def wait_for_parts(
    out: str | Path, process_count: int, run_key: dict, skip: int = 0, timeout: float | None = None
) -> list[tuple[dict, list[dict]]]:
    """The parts of processes ``0..process_count-1`` except ``skip``, waiting until each exists and belongs to
    this run (its header's ``run`` equals ``run_key``). ``TimeoutError`` after ``timeout`` seconds."""
    found: dict[int, tuple[dict, list[dict]]] = {}
    t0 = last_log = time.monotonic()
    while True:
        for k in range(process_count):
            path = part_path(out, k)
            if k == skip or k in found or not path.is_file():
                continue
            header, entries = read_part(path)
            if header.get("run") == run_key and header.get("process_count") == process_count:
                found[k] = (header, entries)
        missing = [k for k in range(process_count) if k != skip and k not in found]
        if not missing:
            return [found[k] for k in sorted(found)]
        now = time.monotonic()
        if timeout is not None and now - t0 > timeout:
            raise TimeoutError(f"no results from process(es) {missing} after {timeout:g} s")
        if now - last_log > 60:
            log.info("waiting for the results of process(es) %s", missing)
            last_log = now
        time.sleep(POLL_SECONDS)


def merge_parts(parts: Sequence[tuple[dict, list[dict]]], n_datasets: int) -> tuple[list[dict], list[float], dict]:
    """Every process's rows, per-dataset seconds (the slowest process's: they ran side by side) and the summed
    assistant counts."""
    entries = [e for _, es in parts for e in es]
    seconds = [max((h["seconds"][k] for h, _ in parts), default=0.0) for k in range(n_datasets)]
    assistant: dict = {}
    for h, _ in parts:
        for key, v in (h.get("assistant") or {}).items():
            assistant[key] = assistant.get(key, 0) + v
    return entries, seconds, assistant


# ----------------------------------------------------------------------------------------------------------------
# output files


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def render_md(results: dict) -> str:
    """``results.md``: one line per dataset and the overall line."""
    lines = [
        f"# Evaluation of {results['model']}",
        "",
        "| dataset | WER % | S | D | I | ref. words | rows | scored | empty ref. | unreadable | too long "
        "| audio s | s | RTF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in [*results["datasets"].items(), ("**overall**", results["overall"])]:
        lines.append(
            f"| {name} | {_fmt(d['wer'], '.2f')} | {d['substitutions']} | {d['deletions']} | {d['insertions']} "
            f"| {d['reference_words']} | {d['num_samples']} | {d['scored']} | {d['empty_references']} "
            f"| {d['unreadable']} | {d['too_long']} | {d['audio_seconds']:.1f} | {d['seconds']:.1f} "
            f"| {_fmt(d['rtf'], '.3f')} |"
        )
    a = results.get("assistant")
    if a:
        lines += [
            "",
            f"Speculative decoding with {a['model']}: {a['accepted_tokens']} of {a['drafted_tokens']} drafted "
            f"tokens accepted ({_fmt(a['acceptance_rate'] and 100 * a['acceptance_rate'], '.1f')} %).",
        ]
    notes = [f"- {n}: {d['note']}" for n, d in results["datasets"].items() if d.get("note")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_predictions(path: Path, rows: Sequence[dict], names: Sequence[str]) -> None:
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "dataset": names[r["dataset"]], "prediction": r.get("prediction") or ""})


def write_results(out: str | Path, results: dict, rows: Sequence[dict] | None, names: Sequence[str]) -> list[str]:
    """``results.json``, ``results.md`` and (``rows`` given) ``predictions.csv``; returns the write errors.

    Every file a run owns is replaced: without ``rows``, an earlier run's ``predictions.csv`` is removed, so it
    never stands beside results it does not belong to."""
    out, errors = storage.location(out), []
    for name, write in (
        ("results.json", lambda p: p.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")),
        ("results.md", lambda p: p.write_text(render_md(results))),
    ):
        try:
            with atomic_write(out / name) as tmp:
                write(tmp)
        except OSError as e:
            errors.append(str(write_error(out / name, e)))
    try:
        if rows is not None:
            write_predictions(out / "predictions.csv", rows, names)
        elif (out / "predictions.csv").exists():
            (out / "predictions.csv").unlink()
    except OSError as e:
        errors.append(str(write_error(out / "predictions.csv", e)))
    return errors
