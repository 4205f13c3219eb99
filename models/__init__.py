"""Encoders for MRI foundation models.

``vit`` (DINOv2-style ViT), ``heads`` (DINO head), ``sam_encoder`` (SAM's image encoder),
``convert`` (SAM ↔ DINOv2 state dicts, MRI-CORE → SAM), ``zoo`` (named models from local
weights). See docs/models.md.
"""
