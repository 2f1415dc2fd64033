"""Evaluation during distillation: greedy transcripts of each held-out set and their WER, for the student
at the current step and (once) for the teacher; and the eval losses (cross-entropy against the reference
text and KL to the teacher, at temperature 1), teacher-forced on the references as the original does."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from distil_whisper_jax.core.parallel import data_mesh, pad_batch, replicate
from distil_whisper_jax.data.eval_sets import EvalSet
from distil_whisper_jax.data.stream import IGNORE, LabelOptions, build_sequence, sequence_to_arrays
from distil_whisper_jax.decode.generate import generate, generation_options, strip
from distil_whisper_jax.speech.token_layout import SpecialTokens, prompt_ids
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.weights.checkpoint import host_copy
from distil_whisper_jax.weights.loading import Pretrained

log = logging.getLogger("distil_whisper_jax.stages.distill.distill")


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
        mel, n = pad_batch(eval_set.features[i : i + bs, :, : pre.config.n_frames], bs)  # a 15 s student: 1st half
        ids = strip(generate(params, mel, prompt, pre.config, opts, jnp.dtype(gen["dtype"]), devices)[:n], specials.eot)
        texts += [pre.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    return wer(eval_set.texts, texts, language=gen["language"] or "en"), texts


def reference_labels(
    texts: Sequence[str], tokenizer: Any, specials: SpecialTokens, opts: LabelOptions
) -> dict[str, np.ndarray]:
    """Teacher-forcing ``decoder_input_ids`` and ``labels`` [N, max_label_length - 1] of reference texts:
    the prompt without timestamps or previous text, the text (cut to fit), EOT."""
    opts = dataclasses.replace(opts, timestamp_probability=0.0, condition_on_prev_probability=0.0, truncate=True)
    rng = np.random.default_rng(0)  # unused draws: no timestamps, no previous text
    width = opts.max_label_length - 1
    pairs = []
    for text in texts:
        ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False) if text.strip() else []
        pairs.append(sequence_to_arrays(build_sequence(ids, None, specials, opts, rng), width, specials))
    return {"decoder_input_ids": np.stack([p[0] for p in pairs]), "labels": np.stack([p[1] for p in pairs])}


def evaluate_losses(
    params: Any, teacher_params: Any, eval_set: EvalSet, labels: dict, eval_step: Callable, batch_size: int
) -> dict[str, float]:
    """Token-mean ``ce`` and ``kl`` (and ``loss``) of the student on an eval set, summed exactly over
    batches padded to ``batch_size`` (padding rows have no labels and count for nothing)."""
    sums = {"loss_sum": 0.0, "ce_sum": 0.0, "kl_sum": 0.0, "num_tokens": 0.0}
    for i in range(0, len(eval_set.texts), batch_size):
        feats, _ = pad_batch(eval_set.features[i : i + batch_size], batch_size)
        inputs, _ = pad_batch(labels["decoder_input_ids"][i : i + batch_size], batch_size)
        targets, n = pad_batch(labels["labels"][i : i + batch_size], batch_size)
        targets[n:] = IGNORE
        batch = {"input_features": feats, "decoder_input_ids": inputs, "labels": targets}
        m = eval_step(params, teacher_params, batch)
        for key in sums:
            sums[key] += float(m[key])
    n_tok = max(sums["num_tokens"], 1.0)
    return {"ce": sums["ce_sum"] / n_tok, "kl": sums["kl_sum"] / n_tok, "loss": sums["loss_sum"] / n_tok}


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
    eval_step: Callable | None = None  # train.make_eval_step on ``devices``: eval CE/KL; None: WER only
    label_opts: LabelOptions | None = None
    _teacher_params: Any = None
    _labels: dict[str, dict] = dataclasses.field(default_factory=dict)

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
            results[es.name] = {"student": s_wer, "teacher": t_wer, **self._losses(params, es)}
            scalars = {f"eval/{tag(es.name)}/wer": s_wer, f"eval/{tag(es.name)}/teacher_wer": t_wer}
            scalars.update(
                {f"eval/{tag(es.name)}/{k}": results[es.name][k] for k in ("ce", "kl") if k in results[es.name]}
            )
            logger.log(step, scalars)
            losses = "".join(f", {k.upper()} {results[es.name][k]:.4f}" for k in ("ce", "kl") if k in results[es.name])
            log.info(
                "eval step %d on %s (%d clips): student WER %.2f%%, teacher %.2f%%%s",
                step,
                es.name,
                len(es.texts),
                s_wer,
                t_wer,
                losses,
            )
        return results

    def _losses(self, params: Any, es: EvalSet) -> dict[str, float]:
        if self.eval_step is None:
            return {}
        if es.name not in self._labels:
            self._labels[es.name] = reference_labels(es.texts, self.student.tokenizer, self.specials, self.label_opts)
        bs = self.gen["batch_per_device"] * len(self.devices)
        return evaluate_losses(params, self.teacher_params(), es, self._labels[es.name], self.eval_step, bs)
