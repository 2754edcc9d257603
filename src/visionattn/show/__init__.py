"""Pictures of what attention computed (``visionattn show``) and the main job's report.

The engine's "show" part: a :class:`~visionattn.layers.recording.Recorder` captures what the layers computed,
each picture (:mod:`visionattn.show.registry`) draws it with matplotlib from a :class:`~visionattn.show.registry.
Subject` (a model, its input images and how to draw them), the command (:mod:`visionattn.show.command`) loads the
subject from ``--checkpoint`` / ``--image`` or the defaults, and :mod:`visionattn.show.report` puts a comparison,
its plots, pictures and speed figures on one self-contained HTML page.
"""
