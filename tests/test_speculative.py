"""Speculative decoding returns exactly the teacher's greedy tokens, on the real tiny.en and real speech."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from distil_whisper_jax.decode import speculative
from distil_whisper_jax.decode.generate import GenerationOptions, generate, generation_options
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens
from distil_whisper_jax.weights import student as student_lib

MAX_NEW = 120


@pytest.fixture(scope="module")
def mels(clip_audio):
    return np.concatenate([audio.log_mel_spectrogram(a, n_mels=80) for a in clip_audio])


@pytest.fixture(scope="module")
def two_layer(tiny):
    config, params, _ = student_lib.make_student(tiny.config, tiny.params, 2)
    return config, params


def _setup(tiny, timestamps):
    sp = special_tokens(tiny.tokenizer)
    prompt = prompt_ids(sp, timestamps=timestamps)
    opts = generation_options(tiny, sp, return_timestamps=timestamps, max_new_tokens=MAX_NEW, prompt_len=len(prompt))
    return prompt, opts


def _in_batches(fn, mels, batch):
    outs, stats = zip(*(fn(mels[i : i + batch]) for i in range(0, len(mels), batch)))
    return np.concatenate(outs), stats


@pytest.mark.parametrize(
    "assistant,timestamps,batch",
    [
        # every assistant, batch size and timestamp mode appears, without compiling all 8 combinations
        ("2-layer", False, 1),
        ("2-layer", True, 5),
        ("teacher", False, 5),
        ("teacher", True, 1),
    ],
)
def test_identical_to_teacher_greedy(tiny, two_layer, mels, assistant, timestamps, batch):
    s_config, s_params = two_layer if assistant == "2-layer" else (tiny.config, tiny.params)
    prompt, opts = _setup(tiny, timestamps)
    one = jax.local_devices()[:1]
    ref, _ = _in_batches(
        lambda m: (generate(tiny.params, m, prompt, tiny.config, opts, devices=one), None), mels, batch
    )
    out, stats = _in_batches(
        lambda m: speculative.speculative_generate(
            tiny.params, tiny.config, s_params, s_config, m, prompt, opts, 4, share_encoder=True
        ),
        mels,
        batch,
    )
    np.testing.assert_array_equal(out, ref)
    drafted, accepted = sum(s.drafted for s in stats), sum(s.accepted for s in stats)
    assert drafted > 0
    if assistant == "teacher":
        assert accepted == drafted  # drafting for itself: every draft is what the teacher would say
    else:
        assert accepted < drafted


def test_rejects_an_assistant_that_cannot_draft(tiny):
    other = tiny.config.replace(vocab_size=tiny.config.vocab_size - 1)
    prompt, opts = _setup(tiny, False)
    with pytest.raises(ValueError, match="vocab_size"):
        speculative.check_assistant(tiny.config, other)
    mel = np.zeros((1, 80, 3000))
    too_long = tiny.config.max_target_positions - len(prompt) - 4
    for refused, match in (
        (GenerationOptions(num_beams=2, eot=opts.eot), "greedy"),
        (GenerationOptions(max_new_tokens=too_long, eot=opts.eot), "positions"),
    ):
        with pytest.raises(ValueError, match=match):
            speculative.speculative_generate(
                tiny.params, tiny.config, tiny.params, tiny.config, mel, prompt, refused, 4
            )
