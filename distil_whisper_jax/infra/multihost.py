"""``MultiHostConfig``: the one set of multi-host flags every stage that can span several hosts takes
(labelling, distillation, evaluation), and the ``jax.distributed`` start-up they ask for.

On a TPU pod slice every host runs the same command with ``--jax_distributed`` and JAX finds the
coordinator itself; elsewhere (CPU hosts, GPUs, tests) ``--coordinator_address --num_processes
--process_id`` name it. ``--distributed`` (distillation's old name) still works, with a warning, as a
deprecated name of ``--jax_distributed``.
"""

from __future__ import annotations

import dataclasses

import jax

from distil_whisper_jax.infra import config

MULTI = "multi-host (jax.distributed)"

# Field names of the multi-host flags (how a run is launched, never what it computes): a resumed or
# restarted run may change every one of them. "distributed" is distillation's field name before the
# flags were shared; run configs stored by older runs still carry it.
FIELDS = ("coordinator_address", "num_processes", "process_id", "jax_distributed", "distributed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiHostConfig:
    """The multi-host flags of a stage that splits its work over processes."""

    coordinator_address: str | None = config.flag(None, "host:port of process 0", group=MULTI)
    num_processes: int | None = config.flag(None, "number of processes", group=MULTI)
    process_id: int | None = config.flag(None, "this process's index", group=MULTI)
    jax_distributed: bool = config.flag(
        False,
        "call jax.distributed.initialize() (with no arguments on TPU pods and SLURM, where JAX finds the "
        "coordinator; with the three flags above elsewhere)",
        group=MULTI,
        deprecated=("distributed",),
    )

    @property
    def multi_host(self) -> bool:
        """Whether this run starts ``jax.distributed`` (a coordinator or ``--jax_distributed`` given)."""
        return bool(self.coordinator_address or self.jax_distributed)

    def check_multi_host(self) -> None:
        """``ValueError`` naming the flag when the process numbers make no sense."""
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"--num_processes must be ≥ 1, got {self.num_processes}")
        if self.process_id is not None and self.process_id < 0:
            raise ValueError(f"--process_id must be ≥ 0, got {self.process_id}")
        if self.num_processes is not None and self.process_id is not None and self.process_id >= self.num_processes:
            raise ValueError(f"--process_id {self.process_id} must be < --num_processes {self.num_processes}")

    def init_distributed(self) -> None:
        """``jax.distributed.initialize`` when a coordinator (or ``--jax_distributed``) is given."""
        if self.multi_host:
            kw = {}
            if self.coordinator_address:
                kw = dict(
                    coordinator_address=self.coordinator_address,
                    num_processes=self.num_processes,
                    process_id=self.process_id,
                )
            jax.distributed.initialize(**kw)
