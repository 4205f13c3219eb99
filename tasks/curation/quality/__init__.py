"""Image-quality metrics (IQMs) of a converted series, any body part, no atlas: masks from the
intensities alone (masks.py), MRIQC's definitions and slab checks (iqm.py; docs/quality.md)."""
