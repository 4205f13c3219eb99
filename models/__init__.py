"""Encoders for MRI foundation models.

``vit`` (DINOv2-style ViT), ``heads`` (DINO head), ``sam_encoder`` (SAM's image encoder),
``convert`` (SAM ↔ DINOv2 state dicts, MRI-CORE → SAM), ``checkpoints`` (the weights inside
trainers' files), ``registry`` + ``zoo`` + ``zoo3d`` (named models from local weights),
``recipes``, ``ssl`` (2D objectives, the DINO net), ``ssl3d`` and ``encoders3d`` (volumes).
See docs/models.md.
"""
