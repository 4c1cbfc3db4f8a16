"""Help texts that several stages' options share."""

INTENSITY_NET_HELP = (
    "Probability that a labelled training image is re-rendered by a random shallow network "
    "(GIN intensity augmentation, Ouyang et al. 2022; 0 = off). Makes the segmenter rely on "
    "shape rather than one modality's contrast."
)

# the stages that run a trained segmenter over scans (predict, pseudo-label)
MODEL_DIR_HELP = "Model directory (output of `udaseg segment-train` or `udaseg adapt`)."
WINDOW_BATCH_HELP = "Windows per forward pass."
