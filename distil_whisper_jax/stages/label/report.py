"""Counts of the labelling run: per block (bookkeeping files), totals, and ``report.json`` / ``report.md``."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.stages.label.output import STATE_DIR, block_state_path, naming_write_errors, write_json
from distil_whisper_jax.stages.label.units import Bad, bad_kind

log = logging.getLogger(__name__)
MAX_BAD_EXAMPLES = 20  # per block, in the bookkeeping (all are counted)


def count_bads(st: dict, bads: list[Bad]) -> None:
    """Add a block's bad inputs to its counts (by kind, and the first few as examples)."""
    st["bad"] = len(bads)
    for bd in bads:
        k = bad_kind(bd.reason)
        st["bad_by_kind"][k] = st["bad_by_kind"].get(k, 0) + 1
    st["bad_examples"] = [
        {"row": bd.row, "source": bd.source, "kind": bad_kind(bd.reason), "reason": bd.reason}
        for bd in bads[:MAX_BAD_EXAMPLES]
    ]


def empty_stats(b: int, process_index: int) -> dict:
    """A block's counts before any row is read."""
    return {
        "block": b,
        "process": process_index,
        "rows_read": 0,
        "bad": 0,
        "bad_by_kind": {},
        "bad_examples": [],
        "labelled": 0,
        "packs": 0,
        "pieces": 0,
        "written": 0,
        "dropped_wer": 0,
        "marked_wer": 0,
        "no_ground_truth": 0,
        "truncated": 0,
        "audio_seconds": 0.0,
        "audio_seconds_written": 0.0,
        "wer_errors": 0,
        "wer_words": 0,
        "wer_errors_written": 0,
        "wer_words_written": 0,
        "seconds": 0.0,
    }


def log_block(st: dict) -> None:
    wer = 100.0 * st["wer_errors"] / st["wer_words"] if st["wer_words"] else float("nan")
    log.info(
        "block %d: %d rows read, %d labelled (%.4f h audio), %d bad, %d dropped by WER, %d written; "
        "WER %.2f %%, %.1f audio-s/s",
        st["block"],
        st["rows_read"],
        st["labelled"],
        st["audio_seconds"] / 3600,
        st["bad"],
        st["dropped_wer"],
        st["written"],
        wer,
        st["audio_seconds"] / max(st["seconds"], 1e-9),
    )


def build_report(out: Path, config: dict, num_blocks: int) -> dict:
    """Totals over all blocks' bookkeeping files (all processes)."""
    blocks = [json.loads(block_state_path(out, b).read_text()) for b in range(num_blocks)]
    tot = {
        k: sum(bl[k] for bl in blocks)
        for k in (
            "rows_read",
            "bad",
            "labelled",
            "packs",
            "pieces",
            "written",
            "dropped_wer",
            "marked_wer",
            "no_ground_truth",
            "truncated",
            "audio_seconds",
            "audio_seconds_written",
            "wer_errors",
            "wer_words",
            "wer_errors_written",
            "wer_words_written",
            "seconds",
        )
    }
    by_kind: dict[str, int] = {}
    for bl in blocks:
        for k, v in bl["bad_by_kind"].items():
            by_kind[k] = by_kind.get(k, 0) + v
    pct = lambda e, w: round(100.0 * e / w, 4) if w else None  # noqa: E731
    processes = sorted({bl["process"] for bl in blocks})
    return {
        "config": config,
        "shards": sorted(p.name for p in out.glob("shard-*.parquet")),
        "blocks": num_blocks,
        "rows_read": tot["rows_read"],
        "rows_labelled": tot["labelled"],
        "rows_written": tot["written"],
        "rows_dropped_by_wer": tot["dropped_wer"],
        "rows_marked_by_wer": tot["marked_wer"],
        "rows_without_ground_truth": tot["no_ground_truth"],
        "rows_truncated_at_max_label_length": tot["truncated"],
        "packs_of_several_rows": tot["packs"],
        "long_clip_pieces_after_first": tot["pieces"],
        "bad_inputs": {
            "count": tot["bad"],
            "by_kind": dict(sorted(by_kind.items())),
            "examples": [e for bl in blocks for e in bl["bad_examples"]][:200],
        },
        "audio_hours_labelled": tot["audio_seconds"] / 3600,
        "audio_hours_written": tot["audio_seconds_written"] / 3600,
        "wer_all_labelled": pct(tot["wer_errors"], tot["wer_words"]),
        "wer_written": pct(tot["wer_errors_written"], tot["wer_words_written"]),
        "reference_words": tot["wer_words"],
        "throughput": {
            "labelling_seconds_all_processes": tot["seconds"],
            "processes": len(processes),
            "audio_seconds_per_process_second": tot["audio_seconds"] / max(tot["seconds"], 1e-9),
            "audio_hours_per_hour": len(processes) * tot["audio_seconds"] / max(tot["seconds"], 1e-9),
        },
    }


def report_markdown(r: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f} %"  # noqa: E731
    lines = [
        "# Pseudo-labelling report",
        "",
        f"Teacher: `{r['config']['model_name_or_path'] or 'bundled tiny.en'}`; data: `{r['config']['dataset_name']}`.",
        "",
        "| | |",
        "|---|---:|",
        f"| input rows read | {r['rows_read']} |",
        f"| bad inputs skipped | {r['bad_inputs']['count']} |",
        f"| rows labelled | {r['rows_labelled']} |",
        f"| rows written | {r['rows_written']} |",
        f"| rows dropped by WER filter | {r['rows_dropped_by_wer']} |",
        f"| rows marked by WER filter | {r['rows_marked_by_wer']} |",
        f"| rows without ground truth | {r['rows_without_ground_truth']} |",
        f"| rows cut at max_label_length | {r['rows_truncated_at_max_label_length']} |",
        f"| audio hours labelled | {r['audio_hours_labelled']:.4f} |",
        f"| audio hours written | {r['audio_hours_written']:.4f} |",
        f"| pseudo-label WER vs ground truth (all labelled) | {fmt(r['wer_all_labelled'])} |",
        f"| pseudo-label WER vs ground truth (written) | {fmt(r['wer_written'])} |",
        f"| throughput (audio-s per process-s) | {r['throughput']['audio_seconds_per_process_second']:.2f} |",
        "",
    ]
    if r["bad_inputs"]["count"]:
        lines += ["## Bad inputs", "", "| kind | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in r["bad_inputs"]["by_kind"].items()]
        lines += ["", "Examples:", ""]
        lines += [f"- row {e['row']} ({e['source']}): {e['reason']}" for e in r["bad_inputs"]["examples"]]
        lines.append("")
    return "\n".join(lines)


def maybe_write_report(out: Path, config: dict, rows_per_shard: int) -> dict | None:
    """Write the report if every block is done (known once any process has read to the end of the data)."""
    totals = [json.loads(p.read_text())["total_rows"] for p in (out / STATE_DIR).glob("end-*.json")]
    if not totals:
        return None
    num_blocks = math.ceil(max(totals) / rows_per_shard)
    if not all(block_state_path(out, b).exists() for b in range(num_blocks)):
        return None
    report = build_report(out, config, num_blocks)
    write_json(out / "report.json", report, indent=2)
    with naming_write_errors(out / "report.md"), atomic_write(out / "report.md", "w") as f:
        f.write(report_markdown(report))
    return report
