"""One module (or package) per step of the study, in pipeline order: calibration (with the
scrubber's evaluation, ``pii_eval``), quantize, evaluate (a package: ``models``, ``run``,
``views``, ``lmeval``), benchmark (with its decode loops, ``decode``), rollout. A step may
import an earlier step, never a later one."""
