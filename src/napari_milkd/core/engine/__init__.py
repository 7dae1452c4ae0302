"""The teacher/student engine: models hold the math, the training loops own iteration, devices and I/O.

Owns the DWS-MIL models (:mod:`.models`), losses, bag datasets, training generators (MIL teacher, IFKD
student with role reversal, full supervision), metrics, checkpoints (with the model's input spec) and
named schedule presets. Arrays in, checkpoints and events out: no slide reading here.

May import numpy, torch, scipy and ``core.annotations``, ``core.slides``, ``core.runtime``,
``core.atomic``, ``core.errors``; never inference, session, napari or Qt.
"""
