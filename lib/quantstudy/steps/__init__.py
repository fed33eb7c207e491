"""One module per step of the study, in pipeline order: calibration (with the scrubber's
evaluation, ``pii_eval``), quantize, evaluate (with ``lmeval``), benchmark (a package, its
static-cache decode loops in ``benchmark.decode``), rollout. A step may import an earlier step, never a later one."""
