"""The math: the Whisper model, the distillation losses, the optimiser, the train step, FLOP counts and data
parallelism."""
