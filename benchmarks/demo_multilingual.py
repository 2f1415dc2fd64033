"""The demo's ``--multilingual`` mode end to end: wall time per stage, per-language held-out WER and language ID.

    python -m benchmarks.demo_multilingual [--max_steps 60] [--batch_size 8] [--work DIR]

Runs exactly the demo's pipeline (``demo_multilingual.run_pipeline``: multilingual whisper-base teacher → 2-layer
student → pseudo-labels of the bundled French, German and Spanish training speech, one ``--language`` per dataset
→ distillation with the frozen encoder cached → per language, on every held-out sentence: greedy WER and
language-ID accuracy of the teacher, the student before training and after), in this process, from a fresh
directory. Prints the demo's table and writes ``benchmarks/results/demo_multilingual.json`` atomically (the
demo's summary with the machine, the date and the peak RSS); ``docs/languages.md`` quotes it
(``tests/test_docs.py`` checks the quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, run_record
from distil_whisper_jax.infra.files import atomic_write, setup_logging
from distil_whisper_jax.stages.demo import demo
from distil_whisper_jax.stages.demo import multilingual as demo_multilingual

DEFAULT_OUTPUT = RESULTS_DIR / "demo_multilingual.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max_steps", type=int, default=demo.MULTILINGUAL_STEPS)
    p.add_argument("--batch_size", type=int, default=8, help="training examples per device per step")
    p.add_argument("--languages", default="fr+de+es")
    p.add_argument("--work", default=None, help="working directory (default: a new temp dir)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results file (written atomically)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    languages = demo_multilingual.parse_languages(a.languages)
    work = Path(a.work or tempfile.mkdtemp(prefix="demo_multilingual_"))
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = demo_multilingual.run_pipeline(work, languages, demo_multilingual.Sizes(a.max_steps, a.batch_size))
    total = time.perf_counter() - t0
    demo_multilingual.print_summary(r)
    result = {
        **run_record(load_start),
        "command": "python -m distil_whisper_jax --multilingual",
        "config": {**vars(a), "work": str(work)},
        "total_s": total,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        **{k: v for k, v in r.items() if k != "work"},
    }
    print(f"total {total:.0f} s, peak RSS {result['peak_rss_gib']:.2f} GiB")
    with atomic_write(a.output, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
