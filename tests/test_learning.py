"""Training learns: a student distilled from the real tiny.en on bundled speech transcribes held-out bundled
speech far better than the freshly created student.

Every other training test compares the code with itself (resume vs uninterrupted, 2 processes vs 1);
this one checks the outcome. Sized for CI on 2 cores: a few training clips per speaker labelled by the
teacher, the frozen encoder shared and its outputs cached (each clip's encoder pass runs once), and a
couple of held-out clips from each of the 8 held-out speakers. The training runs in a process of its own
with one device: on the suite's 8 emulated devices every device holds a replica of tiny.en, the
student and the optimizer state (~9 GB), for no gain on a CPU.
"""

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from distil_whisper_jax.assets import speech_manifest
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.infra import config
from distil_whisper_jax.stages.distill.distill import DistillConfig
from distil_whisper_jax.stages.student.create_student import create_student

from .helpers import read_tsv, subprocess_env, write_tsv

REPO = Path(__file__).resolve().parents[1]
TRAIN_PER_SPEAKER = 6  # 48 clips labelled by the teacher
HELDOUT_PER_SPEAKER = 2  # 16 clips, every held-out speaker
STEPS = 40  # × global batch 8 (1 device × 8): ~7 epochs of the labelled clips
MARGIN = 30  # WER points the trained student must gain over the fresh one (measured: ~87, 110 → 23)


def _rows_per_speaker(split: str, n: int) -> list[dict]:
    """The first ``n`` rows of each speaker of a bundled manifest, audio paths made absolute."""
    manifest = speech_manifest(split)
    rows = read_tsv(manifest)
    picked: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if len(picked[r["speaker_id"]]) < n:
            picked[r["speaker_id"]].append({**r, "audio": str((manifest.parent / r["audio"]).resolve())})
    return [r for speaker in sorted(picked) for r in picked[speaker]]


def test_distilled_student_beats_the_fresh_one_on_heldout_speech(tiny, tmp_path):
    train = _rows_per_speaker("train", TRAIN_PER_SPEAKER)
    heldout = _rows_per_speaker("heldout", HELDOUT_PER_SPEAKER)
    assert len({r["speaker_id"] for r in heldout}) == 8
    labels = transcribe([r["audio"] for r in train], tiny, batch_size=16, progress=False)
    for r, out in zip(train, labels):
        r["whisper_transcript"] = out["text"].strip()
    create_student(tiny, tmp_path / "student", decoder_layers=2)
    cfg = DistillConfig(
        model_name_or_path=str(tmp_path / "student"),  # its teacher (the bundled tiny.en) is the default
        train_dataset_name=str(write_tsv(tmp_path / "labelled.tsv", train)),
        eval_dataset_name=str(write_tsv(tmp_path / "heldout.tsv", heldout)),
        output_dir=str(tmp_path / "run"),
        freeze_encoder=True,
        cache_encoder_outputs=True,
        max_steps=STEPS,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=3e-4,
        warmup_steps=4,
        max_label_length=64,
        timestamp_probability=0.0,
        condition_on_prev_probability=0.0,
        eval_steps=STEPS,
        save_steps=STEPS,
        logging_steps=10,
        seed=0,
        generation_max_length=48,
        disable_tqdm=True,
    )
    cfg_file = tmp_path / "distill.json"
    cfg_file.write_text(json.dumps(config.to_dict(cfg)))
    cmd = [sys.executable, "-m", "distil_whisper_jax.cli.distill", "--config", str(cfg_file)]
    proc = subprocess.run(cmd, env=subprocess_env(1), cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/heldout/wer" in r]
    assert [r["step"] for r in evals] == [0, STEPS]
    fresh, trained = evals[0]["eval/heldout/wer"], evals[-1]["eval/heldout/wer"]
    teacher = evals[0]["eval/heldout/teacher_wer"]
    assert teacher < 15, teacher  # the labels are good
    assert trained <= fresh - MARGIN, (fresh, trained, teacher)
    # the eval losses on the references' text (teacher-forced) fall with the WER
    assert evals[-1]["eval/heldout/ce"] < evals[0]["eval/heldout/ce"], evals
    assert evals[-1]["eval/heldout/kl"] < evals[0]["eval/heldout/kl"], evals
