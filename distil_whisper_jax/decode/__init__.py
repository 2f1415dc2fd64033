"""Decoding: batched generation (greedy, beam), prompting, speculative decoding, chunked and sequential long-form,
transcribe."""
