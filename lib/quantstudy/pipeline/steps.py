"""The study's steps, listed once: notebook, the step folders each reads, the external inputs
(dotted params keys naming files) it hashes, the params sections its notebook receives, and the
fields it receives but never reads (left out of its skip key).

A leaf module (it imports nothing of the study): the params models take the sections from it, the
runner the order and the dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One notebook of the study.

    ``notebook`` is a file name inside the pipeline's notebooks folder, ``needs`` the steps
    whose output folders it reads, ``inputs`` dotted params keys (``data.conversations``,
    ``model.path``, ...) whose values name external files or folders it reads, ``sections`` the
    params sections its notebook receives, ``ignored`` the flattened fields among them it never
    reads (changing one does not re-run it).
    """

    name: str
    notebook: str
    needs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        """``01_calibration`` -> ``calibration`` (the name after its first underscore)."""
        head, _, tail = self.name.partition("_")
        return tail if head and tail else self.name


# Fields no step reads (study.name is a label for the report).
IGNORED_BY_EVERY_STEP = ("study_name",)

STEPS: tuple[Step, ...] = (
    Step(
        "01_calibration",
        "01_calibration.ipynb",
        (),
        ("data.conversations", "model.path", "data.domain_lexicon"),
        ("study", "model", "data", "calibration"),
        ("study_device", "model_dtype", "model_eval_dtype", "data_task_items"),
    ),
    Step(
        "02_quantize",
        "02_quantize.ipynb",
        ("01_calibration",),
        ("model.path", "data.conversations"),
        ("study", "model", "data", "quantize", "targets"),
        (
            "data_task_items",
            "data_domain_lexicon",
            "targets_evaluation_wall_s",
            "targets_fast_decode_speedup",
            "targets_quantized_bytes_ratio",
        ),
    ),
    Step(
        "03_evaluate",
        "03_evaluate.ipynb",
        ("01_calibration", "02_quantize"),
        ("model.path", "data.conversations", "data.task_items", "data.domain_lexicon"),
        ("study", "model", "data", "evaluate", "serve", "targets"),
        (
            "targets_awq_search_s_max",
            "targets_steps_01_02_wall_s",
            "targets_fast_decode_speedup",
            "targets_quantized_bytes_ratio",
        ),
    ),
    Step(
        "04_benchmark",
        "04_benchmark.ipynb",
        ("02_quantize",),
        ("model.path",),
        ("study", "model", "quantize", "benchmark", "serve", "targets"),
        ("model_eval_dtype", "targets_awq_search_s_max", "targets_steps_01_02_wall_s", "targets_evaluation_wall_s"),
    ),
    Step(
        "05_rollout_analysis",
        "05_rollout_analysis.ipynb",
        ("03_evaluate", "04_benchmark"),
        ("rollout.logs",),
        ("study", "evaluate", "rollout"),
    ),
)
