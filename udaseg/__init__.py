"""udaseg: unsupervised cross-modality domain adaptation for medical image segmentation."""

__version__ = "0.1.0"
