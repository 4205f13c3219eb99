"""3D downstream datasets (segmentation volumes, classification) in the research catalog.

``ingest_downstream`` reads a dataset folder (MSD/nnU-Net, BraTS, image/label folders,
DICOM + DICOM-SEG, or a classification CSV), conforms each case and publishes
``labelled_volumes`` rows; ``load_labelled_volumes`` reads them back. See docs/downstream.md.
"""
from mrifoundry.tasks.ingest.labelled3d.ingest import ingest_downstream
from mrifoundry.tasks.ingest.labelled3d.publish import load_labelled_volumes

__all__ = ["ingest_downstream", "load_labelled_volumes"]
