"""Transcribe clips with exported models in their *real* runtimes, in a subprocess.

    python -m distil_whisper_jax.stages.export.runtimes JOB.json

A runtime is ``hf`` (transformers PyTorch ``pipeline``), ``openai`` (openai-whisper ``load_model`` +
``decode``), ``whispercpp`` (pywhispercpp), ``fasterwhisper`` (faster-whisper ``WhisperModel.transcribe``)
or ``ct2features`` (``ctranslate2.models.Whisper.generate`` on this project's log-mel features, decoded with
the directory's tokenizer: the same model without faster-whisper's own front end). ``JOB.json`` holds
``{"models": [[runtime, path], ...], "clips": [path, ...], "threads": int, "max_new_tokens": int}``; the last
stdout line is ``{"transcripts": {"<path>": ["text", ...], ...}, "peak_rss_mib": float}``, texts in clip order
(keys: ``result_key``), with the worker's own peak resident memory. Every runtime decodes
greedily, without timestamps, in English, from its own audio front end (but ``ct2features``), at most
``max_new_tokens`` tokens. A model that makes its runtime
crash (a bad ggml file segfaults whisper.cpp) takes down only its process; ``finish_runtime`` reports the
exit status. The runtimes are imported inside their functions, so a worker loads only those it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import tokenizers

from distil_whisper_jax.speech.audio import load_audio, log_mel_spectrogram, pad_or_trim

RUNTIMES = ("hf", "openai", "whispercpp", "fasterwhisper", "ct2features")
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the directory holding distil_whisper_jax/


def _hf(model: str, waves: list, threads: int, max_new_tokens: int) -> list[str]:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline

    torch.set_num_threads(threads)
    WhisperProcessor.from_pretrained(model)  # the processor files must load on their own, too
    pipe = pipeline(
        "automatic-speech-recognition",
        model=model,
        dtype=torch.float32,  # fp16 files: fp32 on CPU
        device="cpu",
    )
    if not isinstance(pipe.model, WhisperForConditionalGeneration):
        raise TypeError(f"{model}: pipeline built {type(pipe.model).__name__}, not WhisperForConditionalGeneration")
    kwargs = {"num_beams": 1, "do_sample": False, "return_timestamps": False, "max_new_tokens": max_new_tokens}
    if getattr(pipe.model.generation_config, "is_multilingual", False):
        kwargs.update(language="en", task="transcribe")  # as the others; no language detection
    out = pipe([{"raw": w, "sampling_rate": 16000} for w in waves], batch_size=len(waves), generate_kwargs=kwargs)
    return [o["text"].strip() for o in out]


def _openai(model: str, waves: list, threads: int, max_new_tokens: int) -> list[str]:
    import torch
    import whisper

    torch.set_num_threads(threads)
    net = whisper.load_model(model, device="cpu")
    length = net.dims.n_audio_ctx * 2 * 160  # the model's input (15 s for a 750-position student), not 30 s
    mel = torch.stack(
        [whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w), length), net.dims.n_mels) for w in waves]
    )
    options = whisper.DecodingOptions(
        language="en", without_timestamps=True, fp16=False, temperature=0.0, sample_len=max_new_tokens
    )
    return [r.text.strip() for r in whisper.decode(net, mel, options)]


def _whispercpp(model: str, waves: list, threads: int, max_new_tokens: int) -> list[str]:
    from pywhispercpp.model import Model

    net = Model(
        model,
        n_threads=threads,
        print_progress=False,
        print_realtime=False,
        no_timestamps=True,
        language="en",
        temperature=0.0,
        temperature_inc=0.0,  # no sampling fallback: pure greedy
        # whisper.cpp stops *after* the token at index max_tokens; suppress_nst = openai's "-1" default
        max_tokens=max_new_tokens - 1,
        single_segment=True,
        suppress_nst=True,
    )
    return ["".join(s.text for s in net.transcribe(w)).strip() for w in waves]


def ct2_max_length(prompt_length: int, max_new_tokens: int) -> int:
    """The ``max_length`` that lets CTranslate2's Whisper generate ``max_new_tokens``: it generates at most
    ``min(max_length / 2, max_length - prompt_length)`` (openai's half-context ``sample_len``)."""
    return max(2 * max_new_tokens, prompt_length + max_new_tokens)


def _faster_whisper(model: str, waves: list, threads: int, max_new_tokens: int) -> list[str]:
    from faster_whisper import WhisperModel

    net = WhisperModel(model, device="cpu", compute_type="default", cpu_threads=threads)
    prompt_length = 4 if net.model.is_multilingual else 2  # sot [language task] notimestamps
    # faster-whisper passes len(prompt) + max_new_tokens to CTranslate2 as max_length
    max_new_tokens = ct2_max_length(prompt_length, max_new_tokens) - prompt_length
    texts = []
    for w in waves:
        # Padded with silence to the 30 s window, as openai-whisper, transformers and JAX pad the waveform:
        # faster-whisper itself fills the log-mel after a short clip with zeros (not the log-mel of silence), an
        # input the model never saw in training (an untrained student reads "You" there as ". . . .").
        segments, _ = net.transcribe(
            pad_or_trim(w, net.feature_extractor.n_samples),
            language="en",
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            max_new_tokens=max_new_tokens,
        )
        texts.append("".join(s.text for s in segments).strip())
    return texts


def ct2_features_tokens(model: str, waves: list, threads: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy token ids (prompt and end-of-text left out) of ``ctranslate2.models.Whisper.generate`` on this
    project's log-mel features (``audio.log_mel_spectrogram``), the prompt faster-whisper builds."""
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    net = ctranslate2.models.Whisper(model, device="cpu", compute_type="default", intra_threads=threads)
    tok = Tokenizer(
        tokenizers.Tokenizer.from_file(str(Path(model) / "tokenizer.json")), net.is_multilingual, "transcribe", "en"
    )
    prompt = [*tok.sot_sequence, tok.no_timestamps]
    mel = log_mel_spectrogram(waves, net.n_mels)
    results = net.generate(
        ctranslate2.StorageView.from_array(mel),
        [prompt] * len(waves),
        beam_size=1,
        max_length=ct2_max_length(len(prompt), max_new_tokens),
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    return [[t for t in r.sequences_ids[0] if t != tok.eot] for r in results]


def _ct2_features(model: str, waves: list, threads: int, max_new_tokens: int) -> list[str]:

    tok = tokenizers.Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    ids = ct2_features_tokens(model, waves, threads, max_new_tokens)
    return [tok.decode(t, skip_special_tokens=True).strip() for t in ids]


def worker(
    models: Sequence[tuple[str, str]], clips: Sequence[str], threads: int = 1, max_new_tokens: int = 160
) -> dict[str, list[str]]:
    """In this process: transcribe ``clips`` with each ``(runtime, path)`` of ``models``."""
    run = {
        "hf": _hf,
        "openai": _openai,
        "whispercpp": _whispercpp,
        "fasterwhisper": _faster_whisper,
        "ct2features": _ct2_features,
    }
    waves = [load_audio(c) for c in clips]
    return {result_key(runtime, path): run[runtime](path, waves, threads, max_new_tokens) for runtime, path in models}


def result_key(runtime: str, path: str) -> str:
    """Where a worker's result stands: the model's path (``<path>#features`` for ``ct2features``, whose model
    faster-whisper also runs)."""
    return f"{path}#features" if runtime == "ct2features" else str(path)


def start_runtime(
    models: Sequence[tuple[str, str | os.PathLike]],
    clips: Sequence[str | os.PathLike],
    threads: int = 1,
    max_new_tokens: int = 160,
) -> subprocess.Popen:
    """Start a worker subprocess for ``(runtime, path)`` pairs (returns at once; collect with ``finish_runtime``)."""
    bad = [r for r, _ in models if r not in RUNTIMES]
    if bad:
        raise ValueError(f"unknown runtime {bad[0]!r}; expected one of {RUNTIMES}")
    fd, job = tempfile.mkstemp(prefix="export-verify-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "models": [[r, str(m)] for r, m in models],
                "clips": [str(c) for c in clips],
                "threads": threads,
                "max_new_tokens": max_new_tokens,
            },
            f,
        )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "distil_whisper_jax.stages.export.runtimes", job],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    proc.job_file = job  # type: ignore[attr-defined]
    return proc


class Finished(NamedTuple):
    """A worker's outcome: its transcripts by model (None when it failed, ``error`` says why) and its own peak
    resident memory (None when it printed no result or the system does not report it)."""

    transcripts: dict[str, list[str]] | None
    error: str = ""
    peak_rss_mib: float | None = None


def finish_runtime(proc: subprocess.Popen, timeout: float = 600) -> Finished:
    """Wait for a worker started by ``start_runtime``; a crash, a timeout or a missing result is an ``error``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Finished(None, f"timed out after {timeout:.0f} s")
    finally:
        Path(proc.job_file).unlink(missing_ok=True)  # type: ignore[attr-defined]
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        tail = " | ".join(err.strip().splitlines()[-3:])
        return Finished(None, f"runtime process {how}: {tail}")
    try:
        result = json.loads(out.strip().splitlines()[-1])
        return Finished(result["transcripts"], "", result["peak_rss_mib"])
    except (IndexError, KeyError, TypeError, json.JSONDecodeError):
        return Finished(None, f"runtime printed no result: {out[-200:]!r}")


def peak_rss_mib() -> float | None:
    """This process's peak resident memory since it started its program, in MiB (Linux ``VmHWM``).

    Not ``getrusage``: a child's ``ru_maxrss`` keeps the high-water mark of the parent's pages it was forked
    with, so a worker started from a large process would report the parent's size, not its own."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    kib = [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
    return kib[0] / 1024 if kib else None


def main(argv: Sequence[str] | None = None) -> int:
    (job_file,) = argv if argv is not None else sys.argv[1:]
    job = json.loads(Path(job_file).read_text())
    result = worker([tuple(m) for m in job["models"]], job["clips"], int(job["threads"]), int(job["max_new_tokens"]))
    sys.stdout.write("\n" + json.dumps({"transcripts": result, "peak_rss_mib": peak_rss_mib()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
