"""Student creation: slice a teacher into a student with fewer decoder (and optionally encoder) layers."""

from distil_whisper_jax.stages.student.create_student import CreateStudentConfig, run

__all__ = ["CreateStudentConfig", "run"]
