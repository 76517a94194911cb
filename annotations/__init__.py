"""InsPLAD-seg annotation tools: read Roboflow segmentation exports, turn them into per-crop masks, QA them.

Public entry points:

- :func:`annotations.masks.open_mask_source` -> :class:`annotations.masks.MaskSource`, whose
  ``mask_for_crop`` gives the defect mask of one cropped asset (used by ``insplad build-splits --masks``).
- :func:`annotations.coco_export.open_export` reads a Roboflow "COCO Segmentation" export (folder or zip).
- :func:`annotations.qa.check_export` is the annotation QA behind ``insplad annotations check``.
"""
