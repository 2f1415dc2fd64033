"""Speculative decoding returns exactly the teacher's greedy tokens, on the real tiny.en and real speech, and
its drafted/accepted/pass counts are the ones a replay from the teacher's greedy output predicts.

Assistants: the teacher itself (every draft accepted), a separate copy of its weights with its own encoder
(every draft accepted: the assistant's encoder path is exact), the teacher's decoder over a noisy copy of its
encoder (drafts accepted only while the noise does not change them, and only when the assistant reads its own
encoder; read with the teacher's encoder it accepts everything) and a 2-layer student sliced from tiny.en's
layers (a few drafts accepted, most rejected), and the teacher with its encoder cut to 15 s (a shorter window than
the teacher's: it drafts from the start of the input). Also: a 42 s clip through chunked long-form with the student as
assistant, and bfloat16 teacher and student against bfloat16 greedy."""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distil_whisper_jax.assets import bundled_clips
from distil_whisper_jax.core.model import Whisper
from distil_whisper_jax.decode import decoding, speculative
from distil_whisper_jax.decode import generate as gen_lib
from distil_whisper_jax.decode.generate import GenerationOptions, generate, generation_options
from distil_whisper_jax.decode.transcribe import transcribe_loaded
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import prompt_ids
from distil_whisper_jax.weights import student as student_lib

MAX_NEW = 120
K = 4  # drafts per verification pass
BATCH = 2  # clips 0-3 (2.8-15.4 s) in two batches of 2: rows of one batch finish at different passes


@pytest.fixture(scope="module")
def mels(clip_audio):
    return np.concatenate([audio.log_mel_spectrogram(a, n_mels=80) for a in clip_audio[:4]])


@pytest.fixture(scope="module")
def two_layer(tiny):
    config, params, _ = student_lib.make_student(tiny.config, tiny.params, 2)
    return config, params


@pytest.fixture(scope="module")
def assistants(tiny, two_layer):
    """name → (config, params) of each assistant."""
    rng = np.random.default_rng(0)
    copy = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tiny.params)
    noisy = jax.tree_util.tree_map(
        lambda x: (x + 0.05 * np.std(x) * rng.standard_normal(np.shape(x))).astype(np.float32), tiny.params["encoder"]
    )
    return {
        "teacher": (tiny.config, tiny.params),
        "teacher copy": (tiny.config, copy),
        "noisy encoder": (tiny.config, {"encoder": noisy, "decoder": tiny.params["decoder"]}),
        "2-layer": two_layer,
        "15 s window": student_lib.make_student(tiny.config, tiny.params, 4, None, 750)[:2],
    }


@pytest.fixture(scope="module")
def greedy(tiny, specials, mels):
    """``(prompt, options, the teacher's greedy tokens [N, MAX_NEW])`` without timestamps, on one device."""
    prompt = prompt_ids(specials, timestamps=False)
    opts = generation_options(tiny, specials, max_new_tokens=MAX_NEW, prompt_len=len(prompt))
    one = jax.local_devices()[:1]
    ref = [generate(tiny.params, mels[i : i + BATCH], prompt, tiny.config, opts, devices=one) for i in range(0, 4, 2)]
    return prompt, opts, np.concatenate(ref)


@functools.lru_cache(maxsize=4)
def _forced_fn(config, opts: GenerationOptions, p: int):
    """Compiled teacher forcing for ``config``: ``(params, mel, tokens [B, p + MAX_NEW]) →`` the model's greedy
    choice [B, MAX_NEW] at every generated position given the tokens before it (the same logit processing as
    generation). Cached: every call with the same shapes reuses one program."""
    model = Whisper(config)

    def run(params, mel, tokens):
        logits = model.apply({"params": params}, mel, tokens)[:, p - 1 : p - 1 + MAX_NEW]
        processed = jax.vmap(lambda lg, s: gen_lib.process_logits(lg, tokens, s, p, opts), in_axes=(1, 0), out_axes=1)(
            logits, jnp.arange(MAX_NEW)
        )
        return gen_lib.first_argmax(processed)

    return jax.jit(run)


def _forced_choices(config, params, mel, prompt, ref, opts: GenerationOptions) -> np.ndarray:
    """The model's greedy choice [B, MAX_NEW] at every generated position, given the teacher's greedy tokens
    ``ref`` before it (one teacher-forced pass)."""
    tokens = np.concatenate([np.broadcast_to(np.asarray(prompt, np.int32), (len(ref), len(prompt))), ref], axis=1)
    mel = mel[..., : config.n_frames]  # a shorter-window model hears the start, as in speculative decoding
    return np.asarray(_forced_fn(config, opts, len(prompt))(params, mel, tokens))


@pytest.fixture(scope="module")
def teacher_choices(tiny, mels, greedy):
    """The teacher's teacher-forced choices [N, MAX_NEW] (the replay's premise, checked here: they are its
    greedy tokens up to EOT)."""
    prompt, opts, ref = greedy
    out = np.concatenate(
        [
            _forced_choices(tiny.config, tiny.params, mels[i : i + BATCH], prompt, ref[i : i + BATCH], opts)
            for i in range(0, 4, 2)
        ]
    )
    for row, t in zip(ref, out):
        end = list(row).index(opts.eot) + 1
        np.testing.assert_array_equal(t[:end], row[:end])
    return out


def _replay(ref: np.ndarray, teacher: np.ndarray, assistant: np.ndarray, eot: int) -> tuple[int, int, int]:
    """``(drafted, accepted, teacher passes)`` of one batch: each row starts with 1 token (the prompt pass);
    every pass drafts K tokens, accepts the assistant's choices while they equal the teacher's and adds the
    teacher's next one, until EOT is kept or MAX_NEW tokens are there; the batch runs until its last row ends.
    ``teacher``/``assistant``: the choices of each given the teacher's greedy tokens ``ref`` before them."""
    drafted = accepted = passes = 0
    for g, t, a in zip(ref, teacher, assistant):
        n, row_passes = 1, 0
        done = g[0] == eot
        while not done and n < MAX_NEW:
            lead = 0
            while lead < K:
                j = n + lead
                # drafts n..j-1 were accepted, so they are the teacher's choices: the forced pass fed ``ref``
                assert j < MAX_NEW and np.array_equal(g[n:j], t[n:j]), "the replay ran past the greedy tokens"
                if a[j] != t[j]:
                    break
                lead += 1
            drafted, accepted, row_passes = drafted + K, accepted + lead, row_passes + 1
            done = eot in t[n : n + lead + 1]
            n += lead + 1
        passes = max(passes, row_passes)
    return drafted, accepted, passes


RUNS = [
    # (assistant, share_encoder, every draft accepted?)
    ("teacher", True, True),
    ("noisy encoder", True, True),  # reads the teacher's encoder: its own (noisy) one is not used
    ("teacher copy", False, True),  # its own encoder, the teacher's weights
    ("noisy encoder", False, False),
    ("2-layer", True, False),
    # the teacher's decoder over its encoder cut to 15 s: it reads the first half of the teacher's input (clip 3 is
    # 15.4 s long), drafts well but not always the teacher's tokens
    ("15 s window", False, False),
]


@pytest.mark.parametrize("name,share_encoder,all_accepted", RUNS)
def test_identical_to_teacher_greedy_with_the_replayed_counts(
    tiny, assistants, mels, greedy, teacher_choices, name, share_encoder, all_accepted
):
    s_config, s_params = assistants[name]
    prompt, opts, ref = greedy
    encoder = tiny.params["encoder"] if share_encoder else s_params["encoder"]
    total = np.zeros(3, int)
    for i in range(0, len(mels), BATCH):
        mel, want = mels[i : i + BATCH], ref[i : i + BATCH]
        out, stats = speculative.speculative_generate(
            tiny.params, tiny.config, s_params, s_config, mel, prompt, opts, K, share_encoder=share_encoder
        )
        np.testing.assert_array_equal(out, want)
        teacher = teacher_choices[i : i + BATCH]
        assistant = _forced_choices(
            s_config, {"encoder": encoder, "decoder": s_params["decoder"]}, mel, prompt, want, opts
        )
        counts = (stats.drafted, stats.accepted, stats.teacher_passes)
        assert counts == _replay(want, teacher, assistant, opts.eot), f"batch {i // BATCH}"
        total += counts
    drafted, accepted, _ = total
    assert drafted > 0
    assert accepted == drafted if all_accepted else 0 < accepted < drafted, (accepted, drafted)


def test_long_clip_chunked_with_an_assistant_is_chunked_greedy(tiny, two_layer, monkeypatch):
    """42 s (two windows, timestamps on) through chunked long-form: the same ids window by window, the same
    text and segments as the model alone; the student shares the teacher's encoder and drafts some tokens."""
    (path,) = [p for p, _ in bundled_clips(None) if p.name == "piper_moon_long.flac"]
    one = jax.local_devices()[:1]
    student = dataclasses.replace(tiny, config=two_layer[0], params=two_layer[1], source="2-layer student")
    plain = decoding.decoder(tiny, BATCH, timestamps=True, devices=one)
    spec = decoding.decoder(tiny, BATCH, timestamps=True, devices=one, assistant=student, num_assistant_tokens=K)
    assert spec.share_encoder
    ids: dict[bool, list] = {False: [], True: []}
    call = decoding.Decoder.__call__

    def recording(self, waves):
        out = call(self, waves)
        ids[self.assistant is not None].append(out)
        return out

    monkeypatch.setattr(decoding.Decoder, "__call__", recording)
    results = [
        transcribe_loaded([str(path)], lambda i: audio.load_audio(path), dec, "chunked", return_timestamps=True)
        for dec in (plain, spec)
    ]
    assert ids[True] == ids[False] and sum(len(batch) for batch in ids[True]) >= 2
    assert results[1] == results[0] and len(results[0][0]["segments"]) > 1
    assert 0 < spec.accepted < spec.drafted


def test_bfloat16_teacher_and_assistant_equal_bfloat16_greedy(tiny, specials, two_layer, mels):
    """One short clip (5.3 s) at batch 1: XLA:CPU's bfloat16 matmuls are slow."""
    s_config, s_params = two_layer
    prompt = prompt_ids(specials, timestamps=False)
    opts = generation_options(tiny, specials, max_new_tokens=MAX_NEW, prompt_len=len(prompt))
    mel = mels[1:2]
    ref = generate(tiny.params, mel, prompt, tiny.config, opts, jnp.bfloat16, devices=jax.local_devices()[:1])
    out, stats = speculative.speculative_generate(
        tiny.params, tiny.config, s_params, s_config, mel, prompt, opts, K, jnp.bfloat16, share_encoder=True
    )
    np.testing.assert_array_equal(out, ref)
    assert stats.drafted == K * stats.teacher_passes  # one row: every pass drafts K
    assert 0 < stats.accepted < stats.drafted


def test_rejects_an_assistant_that_cannot_draft(tiny, specials):
    with pytest.raises(ValueError, match=r"its window \(60 s\) is longer than the teacher's \(30 s\)"):
        speculative.check_assistant(tiny.config, tiny.config.replace(max_source_positions=3000))
    other = tiny.config.replace(vocab_size=tiny.config.vocab_size - 1)
    prompt = prompt_ids(specials, timestamps=False)
    opts = generation_options(tiny, specials, max_new_tokens=MAX_NEW, prompt_len=len(prompt))
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


def test_a_draft_vocabulary_keeps_the_output_and_costs_only_acceptance(tiny, mels, greedy):
    """The teacher drafting for itself from a shortlist: with every token of its greedy output in the shortlist
    each draft is still accepted (the shortlist's logits are the full projection's: the maximum of a set that holds
    the overall maximum is that maximum); from its 5 most frequent tokens the output is unchanged and drafts of
    the other tokens are rejected."""
    prompt, opts, ref = greedy
    mel, want = mels[:BATCH], ref[:BATCH]
    run = functools.partial(
        speculative.speculative_generate, tiny.params, tiny.config, tiny.params, tiny.config, mel, prompt, opts, K
    )
    full_out, full = run(share_encoder=True)
    counts = collections.Counter(want.ravel().tolist())
    every = sorted(counts)
    out, stats = run(share_encoder=True, assistant_vocab=every)
    np.testing.assert_array_equal(out, want)
    assert (stats.drafted, stats.accepted, stats.teacher_passes) == (full.drafted, full.drafted, full.teacher_passes)
    few = sorted(counts, key=lambda t: (-counts[t], t))[:5]  # its 5 most frequent tokens
    out, stats = run(share_encoder=True, assistant_vocab=few)
    np.testing.assert_array_equal(out, want)
    assert 0 < stats.accepted < stats.drafted and stats.teacher_passes > full.teacher_passes
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 51864\)"):
        run(assistant_vocab=[0, tiny.config.vocab_size])


def test_the_draft_vocabulary_is_the_most_frequent_tokens_first(tmp_path):
    from distil_whisper_jax.weights.student import read_draft_vocab, write_draft_vocab

    seqs = [[5, 7, 7, 9], [7, 5, 11], [3]]
    write_draft_vocab(tmp_path, collections.Counter(t for s in seqs for t in s))
    assert read_draft_vocab(tmp_path, 2) == [7, 5]  # 7 ×3, 5 ×2
    assert read_draft_vocab(tmp_path, 3) == [7, 5, 3]  # ties by id
    assert read_draft_vocab(tmp_path, 10) == [7, 5, 3, 9, 11]
    write_draft_vocab(tmp_path, {})
    assert read_draft_vocab(tmp_path, 4) == []


def test_assistant_vocab_size_reads_the_students_draft_vocabulary(tiny, specials, two_layer, clip_audio, tmp_path):
    """``--assistant_vocab_size N``: the N most frequent tokens of the assistant's ``draft_vocab.json`` (which
    distillation writes) plus every special and timestamp token; the text is the model's own. Without the file the
    flag is refused, naming it."""
    from distil_whisper_jax.weights.loading import default_model_dir
    from distil_whisper_jax.weights.student import write_draft_vocab

    for f in ("tokenizer.json", "vocabulary.txt", "config.json"):
        (tmp_path / f).symlink_to(default_model_dir() / f)
    student = dataclasses.replace(tiny, config=two_layer[0], params=two_layer[1], tokenizer_dir=tmp_path)
    one = jax.local_devices()[:1]
    with pytest.raises(ValueError, match="--assistant_vocab_size 100: the assistant has no draft_vocab.json"):
        decoding.decoder(tiny, 1, devices=one, assistant=student, assistant_vocab_size=100)
    plain = decoding.decoder(tiny, 1, devices=one)
    want = [plain([w])[0] for w in clip_audio[:2]]
    counts = collections.Counter(t for ids in want for t in ids)
    write_draft_vocab(tmp_path, counts)
    spec = decoding.decoder(tiny, 1, devices=one, assistant=student, num_assistant_tokens=K, assistant_vocab_size=3)
    top3 = sorted(counts, key=lambda t: (-counts[t], t))[:3]
    every_special = set(range(specials.eot, tiny.config.vocab_size))
    assert spec.assistant_vocab == tuple(sorted(set(top3) | every_special))
    assert [spec([w])[0] for w in clip_audio[:2]] == want and 0 < spec.drafted
    # asking for more text tokens than the labels hold: the lowest ids not among them fill the rest
    n = len([t for t in counts if t < specials.eot]) + 4
    wide = decoding.decoder(tiny, 1, devices=one, assistant=student, num_assistant_tokens=K, assistant_vocab_size=n)
    fill = [t for t in range(specials.eot) if t not in counts][:4]
    assert set(wide.assistant_vocab) == {t for t in counts if t < specials.eot} | set(fill) | every_special
