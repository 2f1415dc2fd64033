"""Evaluation during distillation: greedy transcripts of each held-out set and their WER, for the student
at the current step and (once) for the teacher."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from .checkpoint import host_copy
from .eval_data import EvalSet
from .evaluate import wer
from .generate import generate, generation_options, strip
from .models import Pretrained
from .parallel import data_mesh, pad_batch, replicate
from .token_layout import prompt_ids

log = logging.getLogger("distil_whisper_jax.distill")


def evaluate_wer(
    params: Any, pre: Pretrained, eval_set: EvalSet, specials, gen: dict, devices: list
) -> tuple[float, list[str]]:
    """Greedy transcripts of an eval set and their WER (EnglishTextNormalizer for English).

    ``gen``: ``language``, ``task``, ``max_new_tokens``, ``batch_per_device``, ``dtype``."""
    prompt = prompt_ids(specials, gen["language"], gen["task"], timestamps=False)
    opts = generation_options(pre, specials, max_new_tokens=gen["max_new_tokens"], prompt_len=len(prompt))
    n_dev = len(devices)  # batches: a multiple of the device count, no bigger than the set needs
    bs = min(gen["batch_per_device"], -(-len(eval_set.texts) // n_dev)) * n_dev
    texts = []
    for i in range(0, len(eval_set.texts), bs):
        mel, n = pad_batch(eval_set.features[i : i + bs], bs)
        ids = strip(generate(params, mel, prompt, pre.config, opts, jnp.dtype(gen["dtype"]), devices)[:n], specials.eot)
        texts += [pre.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    return wer(eval_set.texts, texts, language=gen["language"] or "en"), texts


def tag(name: str) -> str:
    """Short name of an eval set for metric keys (``eval/<tag>/wer``)."""
    return Path(name.rstrip("/")).stem or name


@dataclasses.dataclass
class Evaluator:
    """Evaluates the student on every eval set, logging and returning ``{name: {student, teacher}}`` WERs.
    The teacher's WER is computed once per set (it does not change); ``teacher_wer`` may be seeded from a
    resumed checkpoint."""

    student: Pretrained
    teacher: Pretrained
    eval_sets: list[EvalSet]
    specials: Any
    gen: dict
    devices: list
    teacher_wer: dict[str, float] = dataclasses.field(default_factory=dict)
    _teacher_params: Any = None

    def teacher_params(self) -> Any:
        """The teacher replicated over this process's devices, made once (also feeds the encoder cache)."""
        if self._teacher_params is None:
            self._teacher_params = replicate(self.teacher.params, data_mesh(self.devices))
        return self._teacher_params

    def __call__(self, state_params: Any, step: int, logger) -> dict[str, dict[str, float]]:
        params = replicate(host_copy(state_params), data_mesh(self.devices))
        results = {}
        for es in self.eval_sets:
            s_wer, _ = evaluate_wer(params, self.student, es, self.specials, self.gen, self.devices)
            if es.name not in self.teacher_wer:
                self.teacher_wer[es.name], _ = evaluate_wer(
                    self.teacher_params(), self.teacher, es, self.specials, self.gen, self.devices
                )
            t_wer = self.teacher_wer[es.name]
            results[es.name] = {"student": s_wer, "teacher": t_wer}
            logger.log(step, {f"eval/{tag(es.name)}/wer": s_wer, f"eval/{tag(es.name)}/teacher_wer": t_wer})
            log.info(
                "eval step %d on %s (%d clips): student WER %.2f%%, teacher %.2f%%",
                step,
                es.name,
                len(es.texts),
                s_wer,
                t_wer,
            )
        return results
