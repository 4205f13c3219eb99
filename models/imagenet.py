"""ImageNet channel statistics: the normalisation SAM, DINOv2 and MRI-CORE were trained with."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
