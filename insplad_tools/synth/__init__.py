"""Synthetic InsPLAD-det-like raw data: procedurally drawn UAV frames with known defects.

``insplad synth RAW_DIR`` (see :mod:`insplad_tools.synth.cli`) and the Python API
``insplad_tools.synth.generate.generate(raw_dir, SynthConfig(...))`` write the raw layout that
``insplad build-splits`` and the annotation tools read. The data is SYNTHETIC and only meant to
exercise the tool chain.
"""
