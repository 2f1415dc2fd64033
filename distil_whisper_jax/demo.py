"""The embedded-default job, end to end, on what ships with the package (offline).

bundled tiny.en teacher → 2-layer student (teacher layers 0 and 3) → pseudo-labels of the bundled training
corpus (concatenated per speaker to ≤ 30 s) → distillation with the frozen encoder shared and cached → greedy
WER on the held-out sentences (teacher, untrained student, trained student) → export of the trained student
to transformers, openai-whisper and whisper.cpp (f16 + q8_0), each verified in its own runtime.

Every stage is the same code path the CLIs run (``pseudo_label.main``, ``distill.main``, ``export.main``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def demo_commands(
    work: Path,
    max_steps: int,
    train_rows: int | None,
    eval_rows: int | None,
    batch: int,
    learning_rate: float,
    max_label_length: int,
    warmup_steps: int | None = None,
) -> dict:
    """The labelling, training and export argv of the demo (also used by the end-to-end test and
    ``benchmarks/distill_demo.py``)."""
    from .assets import speech_manifest

    label = [
        "--dataset_name",
        str(speech_manifest("train")),
        "--text_column_name",
        "text",
        "--speaker_id_column_name",
        "speaker_id",
        "--concatenate_audio",
        "--output_dir",
        str(work / "labelled"),
        "--per_device_eval_batch_size",
        "1",
        "--num_local_devices",
        "1",
    ]
    if train_rows:
        label += ["--max_samples", str(train_rows)]
    every = str(max(max_steps // 10, 1))
    train = [
        "--model_name_or_path",
        str(work / "student"),
        "--train_dataset_name",
        str(work / "labelled"),
        "--eval_dataset_name",
        str(speech_manifest("heldout")),
        "--output_dir",
        str(work / "run"),
        "--freeze_encoder",
        "--cache_encoder_outputs",
        "--max_steps",
        str(max_steps),
        "--per_device_train_batch_size",
        str(batch),
        "--learning_rate",
        str(learning_rate),
        "--warmup_steps",
        every if warmup_steps is None else str(warmup_steps),
        "--lr_scheduler_type",
        "linear",
        "--max_label_length",
        str(max_label_length),
        "--eval_steps",
        str(max_steps),
        "--save_steps",
        str(max_steps),
        "--logging_steps",
        every,
        "--seed",
        "0",
        "--per_device_eval_batch_size",
        "8",
        "--generation_max_length",
        "64",
    ]  # held-out clips are ≤ 8 s
    if eval_rows:
        train += ["--max_eval_samples", str(eval_rows)]
    # Verified on the held-out sentences it was evaluated on (the voice it was trained for): on far
    # out-of-domain speech a 100-step student loops, and fp16/f32 rounding then decides where a loop breaks off.
    # 24 clips (~270 words) so that one word is well under q8_0's 1-point WER allowance.
    export = [
        "--model",
        str(work / "run"),
        "--output_dir",
        str(work / "export"),
        "--overwrite",
        "--verify_audio",
        str(speech_manifest("heldout")),
    ]
    if eval_rows:
        export += ["--verify_max_clips", str(eval_rows)]
    return {"label": label, "train": train, "export": export}


def run(
    work: Path,
    max_steps: int = 100,
    train_rows: int | None = None,
    eval_rows: int | None = 24,
    batch: int = 4,
    learning_rate: float = 3e-4,
    max_label_length: int = 160,
    export: bool = True,
) -> dict[str, Any]:
    """Run every stage in ``work``; returns wall times, held-out WERs and the export's exit status."""
    from .config import parse
    from .create_student import create_student
    from .distill import DistillConfig
    from .distill import run as distill_run
    from .export import main as export_main
    from .pseudo_label import main as pseudo_label

    work = Path(work)
    cmds = demo_commands(work, max_steps, train_rows, eval_rows, batch, learning_rate, max_label_length)
    times: dict[str, float] = {}

    def stage(name: str, fn, *args) -> Any:
        t = time.perf_counter()
        out = fn(*args)
        times[name] = time.perf_counter() - t
        return out

    stage("create_student", create_student, None, work / "student", 2)
    if stage("pseudo_label", pseudo_label, cmds["label"]) != 0:
        raise RuntimeError(f"pseudo-labelling failed; see {work / 'labelled'}")
    if stage("distill", lambda argv: distill_run(parse(DistillConfig, argv)), cmds["train"]) != 0:
        raise RuntimeError(f"distillation failed; see {work / 'run'}")
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/heldout/wer" in r]
    result = {
        "work": str(work),
        "times_s": times,
        "labelled": json.loads((work / "labelled" / "report.json").read_text()),
        "heldout_wer": {
            "teacher": evals[0]["eval/heldout/teacher_wer"],
            "student_untrained": evals[0]["eval/heldout/wer"],
            "student_trained": evals[-1]["eval/heldout/wer"],
        },
    }
    if export:
        result["export_status"] = stage("export", export_main, cmds["export"])
    return result
