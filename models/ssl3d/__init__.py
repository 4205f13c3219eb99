"""3D self-supervised pretraining methods of the volume recipes (Triad, BrainSegFounder, PRISM).

One module per method (``XPretrainer`` + ``load_<method>_encoder``) plus shared pieces
(``decoder3d``: the light reconstruction decoder and patch masks). Import the modules
directly; this package file imports nothing so a method's dependencies load only when used.
"""
