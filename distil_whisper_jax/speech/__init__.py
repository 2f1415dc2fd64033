"""Speech and text: audio and log-mel features, tokenizers and the special-token layout, text normalisation and
WER, subtitles."""
