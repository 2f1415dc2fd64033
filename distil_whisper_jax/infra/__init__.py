"""Infrastructure under every stage: config machinery, storage (local and bucket), file writes and their errors,
multi-host flags, stop signals."""
