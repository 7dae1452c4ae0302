"""The workflow in the user's vocabulary: one slide's session, its project folder and its long jobs.

Owns :class:`~.slide_session.SlideSession` (prepare, weak labels, train teacher, distil student, record
edits, next region, next round, export, save/restore), weak labels → tile bags (:mod:`.weak_labels`,
:mod:`.labels`), the project folder (:mod:`.project`), the job generators front ends run in workers and
the one way to drain them and turn their events into text (:mod:`.jobs`). Every front end (widget, CLI,
demo, benchmarks) drives this package. Top of the core's layers: may import every other core package;
never napari or Qt.
"""
