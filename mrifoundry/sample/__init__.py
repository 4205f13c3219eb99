"""The embedded sample archive: a fictional hospital's report export and MR folder archive.

``generate_sample(out_dir, seed)`` writes ``reports.csv``, ``archive/`` (DICOM full of PHI,
with planted defects) and ``manifest.json`` (the ground truth). See docs/sample-archive.md.
"""
from mrifoundry.sample.generate import GENERATOR_VERSION, generate_sample

__all__ = ["GENERATOR_VERSION", "generate_sample"]
