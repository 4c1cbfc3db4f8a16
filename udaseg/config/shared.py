"""Options several stages share, declared once: the same name, default, help and bounds
everywhere (``device: str = shared.device()``), and help texts shared by options of one meaning.
"""

from typing import Any

from udaseg.config import result, runtime

INTENSITY_NET_HELP = (
    "Probability that a labelled training image is re-rendered by a random shallow network "
    "(GIN intensity augmentation, Ouyang et al. 2022; 0 = off). Makes the segmenter rely on "
    "shape rather than one modality's contrast."
)

IPA_HELP = (
    "Probability that a re-rendered image blends two random renderings through a smooth random "
    "map instead of one (interventional pseudo-correlation augmentation, IPA, Ouyang et al. "
    "2022; needs --intensity-net > 0): the intensity mapping then varies across the image."
)
LOCATION_SCALE_HELP = (
    "Probability that a labelled training image gets a random location-scale re-mapping of its "
    "intensities (SLAug-style, Su et al. 2023; 0 = off): a random tone curve, scale and shift, "
    "for the whole image or, half of the time, one per class label and the background."
)

# the stages that run a trained segmenter over scans (predict, pseudo-label)
MODEL_DIR_HELP = "Model directory (output of `udaseg segment-train` or `udaseg adapt`)."
WINDOW_BATCH_HELP = "Windows per forward pass."


def device() -> Any:
    return runtime("auto", help="auto, cpu, cuda or cuda:N.")


def amp() -> Any:
    # a result: bfloat16 changes the numbers, so an fp32 run and a bf16 run are different artifacts;
    # stages also record the precision it resolved to (udaseg.device.resolve_precision)
    return result(
        True,
        help="bfloat16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX); "
        "float32 elsewhere (with a notice).",
    )


def threads() -> Any:
    return runtime(
        None,
        help="CPU threads torch computes with (default: $SLURM_CPUS_PER_TASK when set, else "
        "torch's default, one per core).",
        low=1,
    )


def workers() -> Any:
    return runtime(1, help="Cases processed in parallel.", low=1)


def checkpoint_every() -> Any:
    return runtime(200, help="Steps between checkpoint_latest.pt.", low=1)


def log_every() -> Any:
    return runtime(10, help="Steps between metrics.jsonl lines.", low=1)


def channels_last() -> Any:
    return runtime(True, help="Channels-last memory format on CUDA.")


def compile_model() -> Any:
    return runtime(False, help="Try torch.compile.")


RESUME_HELP = (
    "Insist on continuing the interrupted run (its .partial folder) from its last checkpoint, "
    "refusing if there is none or it was made with other options or inputs. Without it a rerun "
    "continues such a run when it can (same options and inputs) and otherwise starts over."
)


def resume() -> Any:
    return runtime(False, help=RESUME_HELP)
