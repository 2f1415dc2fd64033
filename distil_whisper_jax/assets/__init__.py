"""Files that ship with the package: speech clips with transcripts, the English spelling map."""

from __future__ import annotations

import csv
from pathlib import Path

ASSETS_DIR = Path(__file__).parent
CLIPS_DIR = ASSETS_DIR / "clips"


def bundled_clips(max_seconds: float | None = 30.0) -> list[tuple[Path, str]]:
    """(path, reference transcript) of the bundled clips, optionally only those ≤ ``max_seconds`` long."""
    with open(CLIPS_DIR / "clips.tsv", newline="", encoding="utf-8") as f:
        rows = [(CLIPS_DIR / r["file"], r["text"]) for r in csv.DictReader(f, delimiter="\t")]
    if max_seconds is not None:
        import soundfile as sf

        rows = [(p, t) for p, t in rows if sf.info(str(p)).duration <= max_seconds]
    return rows
