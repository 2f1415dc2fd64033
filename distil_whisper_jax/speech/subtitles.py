"""Transcripts as files: plain text, SubRip (``.srt``), WebVTT (``.vtt``) and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _timed(segments: Sequence[dict]) -> list[tuple[float, float, str]]:
    """(start, end, text) of every segment with text; a missing end becomes the start (zero length)."""
    out = []
    for s in segments:
        text = str(s.get("text", "")).strip()
        if not text or s.get("start") is None:
            continue
        start = float(s["start"])
        end = float(s["end"]) if s.get("end") is not None else start
        out.append((start, max(start, end), text))
    return out


def to_srt(segments: Sequence[dict]) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` separated by blank lines."""
    cues = [
        f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text.replace('-->', '->')}\n"
        for i, (a, b, text) in enumerate(_timed(segments), 1)
    ]
    return "\n".join(cues)


def to_vtt(segments: Sequence[dict]) -> str:
    """WebVTT: a ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    cues = [f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text.replace('-->', '->')}\n" for a, b, text in _timed(segments)]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_txt(text: str) -> str:
    return text.strip() + "\n"


def to_json(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False, indent=2) + "\n"


WRITERS = {
    "txt": lambda r: to_txt(r.get("text", "")),
    "srt": lambda r: to_srt(r.get("segments", [])),
    "vtt": lambda r: to_vtt(r.get("segments", [])),
    "json": to_json,
}
