"""ImageNet normalization statistics, shared by the loaders and the backbones (RGB, 0..1 scale)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
