"""``insplad build-splits`` / ``insplad validate``: UAV frames + detection annotations -> MVTec AD layout.

Modules: ``taxonomy`` (class/condition mapping), ``sources`` (VOC/COCO readers), ``imaging``
(decode, EXIF, modes, crop), ``crops`` (per-frame worker), ``split`` (grouped stable split),
``manifest``, ``stats``, ``validate`` and ``pipeline`` (``build_dataset``, the Python API).
"""
