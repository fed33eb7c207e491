"""One package per step of the study, in pipeline order: calibration (with the scrubber's
evaluation, ``pii_eval``), quantize, evaluate (with ``lmeval``), benchmark (with its static-cache
decode loops, ``decode``), rollout. Each keeps its algorithm in named modules, its tables and
figures in ``views``, its driver and metrics.json in ``run``; its ``__init__`` is what the
notebook calls. A step may import an earlier step, never a later one."""
