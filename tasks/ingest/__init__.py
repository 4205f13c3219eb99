"""Outside data into the catalog: NIfTI/BIDS collections (collection/), labelled 2D slices (labelled2d),
labelled 3D volumes (labelled3d/)."""
