"""Inference (sliding window, padding, Gaussian weighting, flip TTA) and the predict stage.

Models are tiny test-only networks registered here (the real ones may not exist yet), or
hand-written modules with known outputs: "pointwise" (logits a function of each voxel's value, so
any window layout gives the same answer), "one-hot" (logits = the one-hot of the input's class ids,
so feeding a label map returns it), and "ramp" (logits a function of the position in the window).
Volumes are (S, H, W) arrays as a store holds them.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn
from typer.testing import CliRunner

from tests.conftest import TINY_MANIFEST, tiny_volume, write_nifti
from udaseg import artifacts
from udaseg.cli import app, main
from udaseg.config.predict import parse_stride
from udaseg.data.label_values import class_ids, dataset_codes
from udaseg.data.manifest import load_manifest
from udaseg.data.store import Store
from udaseg.device import resolve_device
from udaseg.errors import UdasegError
from udaseg.inference import (
    flip_sets,
    gaussian_importance,
    keep_largest_component,
    predict_volume,
    segment_volume,
    window_starts,
)
from udaseg.inference.label_tables import class_colours, itksnap_text, slicer_text
from udaseg.inference.sources import CaseInput
from udaseg.models import registry
from udaseg.progress import NullProgress
from udaseg.stages import predict as stage
from udaseg.stages import preprocess
from udaseg.training.checkpoint import save_checkpoint, write_model_json

CLASSES = ["organ_a", "organ_b"]
# TINY_MANIFEST's label codes of organ_a and organ_b (src; its unlabelled tgt shares them): what
# predictions hold by default, indexed by class id
CODES = np.array([0, 5, 7], dtype=np.uint8)
LABEL_FILES = ["labels.ctbl", "labels.itksnap.txt"]


# --- test models ---------------------------------------------------------------------------------


class TinyConv(nn.Module):
    """A real (if tiny) segmenter following the registry's forward contract."""

    def __init__(self, in_channels: int, num_classes: int, dims: int = 2, width: int = 4):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.body = nn.Sequential(
            conv(in_channels, width, 3, padding=1), nn.ReLU(), conv(width, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> dict:
        logits = self.body(x)
        return {"logits": logits, "aux": [], "features": logits}


for _dims in (2, 3):
    if f"test-conv{_dims}d.v0" not in registry._REGISTRY:
        registry.register_model(f"test-conv{_dims}d.v0", dims=_dims, hparams={})(
            functools.partial(TinyConv, dims=_dims)
        )


@pytest.fixture(autouse=True)
def _tolerate_missing_builtin_models(monkeypatch):
    """The built-in model modules are being written elsewhere; the test models do not need them."""
    real = registry._load_builtin

    def load() -> None:
        try:
            real()
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("udaseg.models"):
                raise

    monkeypatch.setattr(registry, "_load_builtin", load)


pytestmark = pytest.mark.usefixtures("one_thread")


class Pointwise(nn.Module):
    """Logits (v, -v, 0.5 v^2) of each voxel value v: no spatial context at all."""

    def forward(self, x: torch.Tensor) -> dict:
        v = x[:, :1]
        return {"logits": torch.cat([v, -v, 0.5 * v * v], 1)}


def pointwise_probabilities(volume: np.ndarray) -> np.ndarray:
    v = torch.from_numpy(volume)
    return torch.stack([v, -v, 0.5 * v * v]).softmax(0).numpy()


class OneHot(nn.Module):
    """Logits 10 x one-hot of the input's (rounded) class ids: feeding a label map returns it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> dict:
        ids = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        return {"logits": 10.0 * nn.functional.one_hot(ids, self.num_classes).movedim(-1, 1)}


class Ramp(nn.Module):
    """2D: class-1 logit = the column's position within the window (input ignored)."""

    def forward(self, x: torch.Tensor) -> dict:
        n, _, h, w = x.shape
        ramp = torch.arange(w, dtype=torch.float32).expand(n, 1, h, w)
        return {"logits": torch.cat([torch.zeros_like(ramp), ramp], 1)}


def symmetric_conv(dims: int) -> nn.Module:
    """A convolution whose kernel is unchanged by flipping any axis: flip-equivariant."""
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 3, 3, padding=1, bias=True)
    torch.manual_seed(0)
    with torch.no_grad():
        weight = torch.randn_like(conv.weight)
        for axis in range(2, 2 + dims):
            weight = weight + weight.flip(axis)
        conv.weight.copy_(weight)
    return nn.Sequential(conv).eval()


def asymmetric_conv(dims: int) -> nn.Module:
    torch.manual_seed(1)
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 3, 3, padding=1).eval()


# --- window placement and weights ----------------------------------------------------------------


def test_window_starts_cover_the_axis_evenly():
    assert window_starts(16, 8, 4) == [0, 4, 8]
    assert window_starts(17, 8, 4) == [0, 3, 6, 9]  # last window ends at the axis' end
    assert window_starts(8, 8, 4) == [0]
    assert window_starts(5, 8, 4) == [0]  # shorter axes are padded first
    assert window_starts(20, 8, 8) == [0, 6, 12]


def test_gaussian_importance_is_symmetric_positive_and_peaks_at_one():
    g = gaussian_importance((1, 9, 16))
    assert g.shape == (1, 9, 16) and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g.min() > 0
    np.testing.assert_allclose(g, g[:, ::-1, ::-1], rtol=1e-6)
    # sigma = window / 8 per axis: one sigma (9/8 voxels) from the centre the weight is e^-1/2
    column = gaussian_importance((1, 9, 1))[0, :, 0]
    assert column[4] == pytest.approx(1.0)
    assert column[3] == pytest.approx(np.exp(-0.5 * (1 / (9 / 8)) ** 2), rel=1e-5)


def test_flip_sets_are_every_subset():
    assert flip_sets((2, 1)) == [(), (1,), (2,), (1, 2)]
    assert len(flip_sets((0, 1, 2))) == 8
    with pytest.raises(ValueError):
        flip_sets((3,))


# --- predict_volume ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dims", "patch", "stride", "gaussian"),
    [
        (3, (4, 8, 8), None, True),
        (3, (4, 8, 8), 0.25, False),
        (3, (4, 8, 8), (1, 3, 5), True),
        (3, (4, 8, 8), 1.0, True),
        (3, (16, 64, 64), None, True),  # volume smaller than the window in every axis
        (2, (8, 8), None, True),
        (2, (8, 8), (3, 5), False),
        (2, None, None, True),  # whole slices padded to a multiple of 32
        (2, (64, 64), None, True),
    ],
)
def test_a_pointwise_model_gives_the_same_answer_for_any_window_layout(
    dims, patch, stride, gaussian
):
    volume = np.random.default_rng(0).normal(size=(7, 13, 19)).astype(np.float32)
    probabilities = predict_volume(
        Pointwise(), volume, dims=dims, patch_size=patch, stride=stride, gaussian=gaussian
    )
    assert probabilities.shape == (3, 7, 13, 19) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, pointwise_probabilities(volume), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-6)


@pytest.mark.parametrize("gaussian", [False, True])
def test_overlapping_windows_are_averaged_with_their_weights(gaussian):
    """Columns 0..15 are covered by windows starting at 0, 4 and 8 (width 8, stride 4); the Ramp
    model's probability depends on the position in the window, so each column gets the weighted
    mean over the windows covering it."""
    volume = np.zeros((2, 4, 16), np.float32)
    got = predict_volume(Ramp(), volume, dims=2, patch_size=(4, 8), stride=0.5, gaussian=gaussian)
    p = torch.arange(8, dtype=torch.float64).sigmoid().numpy()  # softmax of (0, position)
    g = gaussian_importance((1, 1, 8))[0, 0].astype(np.float64) if gaussian else np.ones(8)
    expected = []
    for column in range(16):
        offsets = [column - s for s in (0, 4, 8) if s <= column < s + 8]
        expected.append(sum(g[o] * p[o] for o in offsets) / sum(g[o] for o in offsets))
    np.testing.assert_allclose(got[1, 0, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(got[1], np.broadcast_to(got[1, 0, 0], (2, 4, 16)))


def test_gaussian_weighting_changes_overlaps_only():
    volume = np.zeros((1, 4, 16), np.float32)
    uniform = predict_volume(Ramp(), volume, dims=2, patch_size=(4, 8), gaussian=False)
    weighted = predict_volume(Ramp(), volume, dims=2, patch_size=(4, 8), gaussian=True)
    assert not np.allclose(uniform, weighted)
    # columns 0..3 lie in the first window only: nothing to weigh there
    np.testing.assert_allclose(uniform[..., :4], weighted[..., :4], rtol=1e-6)


def test_2d_models_see_batches_of_single_slices():
    seen = []
    model = asymmetric_conv(2)

    def recording(x):
        seen.append(tuple(x.shape))
        return {"logits": model(x)}

    volume = np.random.default_rng(1).normal(size=(5, 12, 10)).astype(np.float32)
    volume[2, 0, 0] = volume.min() - 1  # padding uses the volume's minimum: slice 2 holds it
    results = [
        predict_volume(recording, volume, dims=2, patch_size=(16, 16), batch_size=b)
        for b in (1, 3, 64)
    ]
    assert {s[1:] for s in seen} == {(1, 16, 16)}  # (N, in_channels, H, W), padded to the patch
    assert max(s[0] for s in seen) == 5 and seen[0][0] == 1
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-6)
    # each slice on its own: slice 2 alone gives slice 2 of the volume's result
    alone = predict_volume(recording, volume[2:3], dims=2, patch_size=(16, 16))
    np.testing.assert_allclose(alone[:, 0], results[0][:, 2], atol=1e-6)


def test_2_5d_models_get_neighbouring_slices_as_channels():
    seen = []

    def centre(x):
        seen.append(x)
        return {"logits": torch.cat([x[:, 1:2], -x[:, 1:2]], 1)}

    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 8, 8), np.float32)
    predict_volume(centre, volume, dims=2, patch_size=(8, 8), in_channels=3, batch_size=4)
    channels = seen[0][:, :, 0, 0]  # (slice, channel) values = slice numbers
    assert channels.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


@pytest.mark.parametrize(("dims", "patch", "shape"), [(2, (12, 16), (3, 12, 16)),
                                                        (3, (4, 8, 8), (8, 16, 16))])  # fmt: skip
def test_flip_tta_of_a_flip_equivariant_model_equals_no_tta(dims, patch, shape):
    volume = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    model = symmetric_conv(dims)
    plain = predict_volume(model, volume, dims=dims, patch_size=patch)
    tta = predict_volume(model, volume, dims=dims, patch_size=patch, tta_flips=(0, 1, 2))
    np.testing.assert_allclose(tta, plain, atol=1e-5)


def test_flip_tta_averages_the_predictions_of_the_flipped_volumes_flipped_back():
    volume = np.random.default_rng(3).normal(size=(6, 10, 12)).astype(np.float32)
    model = asymmetric_conv(3)
    options = {"dims": 3, "patch_size": (4, 8, 8)}
    tta = predict_volume(model, volume, tta_flips=(1, 2), **options)
    expected = np.mean(
        [
            np.flip(
                predict_volume(model, np.flip(volume, axes).copy(), **options),
                [1 + a for a in axes],
            )
            for axes in [(), (1,), (2,), (1, 2)]
        ],
        axis=0,
    )  # fmt: skip
    np.testing.assert_allclose(tta, expected, atol=1e-6)
    assert not np.allclose(tta, predict_volume(model, volume, **options), atol=1e-3)


def test_segment_volume_is_the_argmax_and_bad_logits_are_named():
    volume = np.random.default_rng(4).normal(size=(3, 9, 9)).astype(np.float32)
    labels = segment_volume(Pointwise(), volume, dims=2, patch_size=(16, 16))
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    np.testing.assert_array_equal(labels, pointwise_probabilities(volume).argmax(0))
    with pytest.raises(ValueError, match="logits of shape"):
        predict_volume(lambda x: {"logits": x[..., :-1]}, volume, dims=2, patch_size=(16, 16))


# --- the round trip: label on the processed grid -> original file's grid -------------------------

ROUND_TRIP_MANIFEST = """
name: rt
view: axial
classes: [organ_a, organ_b]
domains:
  src:
    modality: CT
    reader: nifti
    images: src/{case}_image.nii.gz
    labels: src/{case}_label.nii.gz
    label_map: {5: organ_a, 7: organ_b, 9: background}
    intensity: {method: minmax, percentiles: [0.5, 99.5], over: body}
geometry:
  inplane_mm: null
  through_plane_mm: null
  crop: {method: label, margin_mm: 3}
  inplane_size: [16, 40]
splits: {val_fraction: 0.0, seed: 0}
"""


@pytest.mark.parametrize(("orientation", "assume"), [("RAI", None), ("ASL", None), ("RAI", "PIR")])
@pytest.mark.parametrize(("dims", "patch"), [(2, (16, 16)), (3, (4, 8, 16))])
def test_round_trip_writes_the_original_label_exactly_on_the_original_grid(
    tmp_path, orientation, assume, dims, patch
):
    """Scans stored with flipped (RAI) or permuted and flipped (ASL) axes, anisotropic spacing and
    an off-centre origin are reoriented, cropped to the label (rows cropped, columns padded past
    the scan) and predicted by the 'identity on labels'; the written file must be the original
    label with its codes mapped, voxel for voxel, on the original grid. With the manifest's
    assume_orientation (a header known to be wrong) the result is computed on the assumed grid
    and still overlays the file voxel by voxel, under the file's own header."""
    raw = tmp_path / "raw"
    geometry = {
        "spacing": (0.8, 1.1, 3.0),
        "origin": (-12.5, 30.25, 7.0),
        "direction": sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(orientation),
    }
    for i, case in enumerate(("a", "b")):
        image, label = tiny_volume(i, shape=(10, 28, 32))
        write_nifti(image, raw / "src" / f"{case}_image.nii.gz", **geometry)
        write_nifti(label, raw / "src" / f"{case}_label.nii.gz", **geometry)
    text = ROUND_TRIP_MANIFEST
    if assume:
        text = text.replace(
            "    modality: CT\n", f"    modality: CT\n    assume_orientation: {assume}\n"
        )
    (tmp_path / "rt.yaml").write_text(text)
    config = preprocess.PreprocessConfig(dataset=str(tmp_path / "rt.yaml"), raw=raw)
    preprocess.run(config, tmp_path / "w")
    store = Store(tmp_path / "w" / "preprocessed" / "rt__src" / "store.h5")
    # the model sees the stored label instead of the image
    cases = [CaseInput(c, store.label(c).astype(np.float32), store.meta(c)) for c in store.case_ids]
    assert cases[0].image.shape[1:] == (16, 40)  # rows cropped to 16, columns padded to 40
    assert (cases[0].meta["assumed_direction"] is None) == (assume is None)
    segment = functools.partial(segment_volume, OneHot(3), dims=dims, patch_size=patch)
    out = tmp_path / "pred"
    out.mkdir()
    seconds = stage.predict_cases(cases, segment, out)
    assert set(seconds) == {"a", "b"}
    for case in ("a", "b"):
        original = sitk.ReadImage(str(raw / "src" / f"{case}_label.nii.gz"))
        written = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        codes = sitk.GetArrayFromImage(original)
        expected = np.select([codes == 5, codes == 7], [1, 2], 0)
        assert written.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)
        assert written.GetSize() == original.GetSize()
        assert written.GetSpacing() == original.GetSpacing()
        assert written.GetOrigin() == original.GetOrigin()
        np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)


# --- the stage -----------------------------------------------------------------------------------


def write_model_dir(
    path: Path,
    *,
    dims: int = 2,
    classes: list[str] = CLASSES,
    view: str = "axial",
    patch_size: list[int] | None = None,
    artifact: bool = True,
    seed: int = 0,
    context_slices: int = 0,
) -> Path:
    """A model directory as segment-train writes: model.json, checkpoint_final.pt (+ manifest);
    ``context_slices`` K > 0: a 2.5D model of 2K + 1 input channels."""
    name = f"test-conv{dims}d.v0"
    channels = 2 * context_slices + 1
    kwargs = {"in_channels": channels, "num_classes": len(classes) + 1, "width": 4}
    torch.manual_seed(seed)
    model = registry.create_model(name, **kwargs)
    info = {
        "name": name, "kwargs": kwargs, "dims": dims, "classes": list(classes),
        "num_classes": len(classes) + 1, "in_channels": channels, "dataset": "tiny", "view": view,
        "patch_size": patch_size or ([16, 16] if dims == 2 else [4, 16, 16]),
    }  # fmt: skip
    if context_slices:
        info["context_slices"] = context_slices

    def fill(folder: Path) -> None:
        write_model_json(folder, info)
        payload = {"model": {"name": name, "kwargs": kwargs}, "state_dict": model.state_dict(),
                   "optimizer": None, "scheduler": None, "step": 0, "best": None, "rng": None,
                   "extra": {}}  # fmt: skip
        save_checkpoint(folder / "checkpoint_final.pt", payload)

    if not artifact:
        path.mkdir(parents=True)
        fill(path)
        return path
    with artifacts.building(path) as tmp:
        fill(tmp)
        artifacts.publish(tmp, path, stage="segment-train", config={"model": name})
    return path


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> dict:
    """Raw tiny dataset (4 labelled src cases, 3 tgt) preprocessed into W/preprocessed/tiny__*."""
    root = tmp_path_factory.mktemp("predict")
    raw = root / "raw"
    for i in range(4):
        image, label = tiny_volume(i)
        write_nifti(image, raw / "src" / f"c{i}_image.nii.gz", origin=(3.0, -7.5, 11.0))
        write_nifti(label, raw / "src" / f"c{i}_label.nii.gz", origin=(3.0, -7.5, 11.0))
    for i in range(3):
        image, _ = tiny_volume(10 + i, flip_y=True)
        write_nifti(image, raw / "tgt" / f"m{i}_image.nii.gz", spacing=(2.0, 2.0, 4.0),
                    origin=(0.0, 54.0, 0.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))  # fmt: skip
    manifest = root / "tiny.yaml"
    manifest.write_text(TINY_MANIFEST)
    config = preprocess.PreprocessConfig(dataset=str(manifest), raw=raw)
    preprocess.run(config, root / "w")
    return {"raw": raw, "manifest": manifest, "store": root / "w" / "preprocessed" / "tiny__src",
            "target": root / "w" / "preprocessed" / "tiny__tgt"}  # fmt: skip


@pytest.fixture
def store_copy(tiny_store, tmp_path) -> Path:
    """A private copy of the src store artifact (for tests that damage it)."""
    copy = tmp_path / "preprocessed" / "tiny__src"
    shutil.copytree(tiny_store["store"], copy)
    return copy


def run_stage(model_dir: Path, data: Path, work: Path, **options) -> artifacts.Manifest:
    force = options.pop("force", False)
    config = stage.PredictConfig(model_dir=model_dir, data=data, device="cpu", **options)
    return stage.run(config, work, force=force)


def assert_on_original_grid(prediction: Path, original: Path, values=CODES) -> np.ndarray:
    """The prediction's array, checked: the original's grid, uint8 ``values`` only."""
    a, b = sitk.ReadImage(str(prediction)), sitk.ReadImage(str(original))
    assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    array = sitk.GetArrayFromImage(a)
    assert array.dtype == np.uint8 and set(np.unique(array).tolist()) <= set(values.tolist())
    return array


@pytest.mark.parametrize("dims", [2, 3])
def test_stage_predicts_every_case_onto_the_original_grid(tiny_store, tmp_path, dims):
    model_dir = write_model_dir(tmp_path / "models" / "unet", dims=dims)
    work = tmp_path / "w"
    if dims == 2:  # udaseg's models never saw flips: --tta says it may hurt them
        with pytest.warns(UserWarning, match="trained without flips"):
            manifest = run_stage(model_dir, tiny_store["store"], work, tta=True)
    else:
        manifest = run_stage(model_dir, tiny_store["store"], work)
    out = work / "predict" / "unet__tiny__src"
    assert manifest.summary["output"] == str(out) and manifest.summary["cases"] == 4
    assert sorted(p.name for p in out.iterdir()) == [
        "c0.nii.gz", "c1.nii.gz", "c2.nii.gz", "c3.nii.gz", *LABEL_FILES, "manifest.json",
    ]  # fmt: skip
    assert set(manifest.summary["seconds_per_case"]) == {"c0", "c1", "c2", "c3"}
    for case in ("c0", "c3"):
        original = tiny_store["raw"] / "src" / f"{case}_image.nii.gz"
        assert_on_original_grid(out / f"{case}.nii.gz", original)
    recorded = artifacts.load_manifest(out)
    assert recorded.stage == "predict"
    assert recorded.inputs["model"]["path"] == str(model_dir.resolve())
    assert recorded.inputs["data"]["path"] == str(tiny_store["store"].resolve())
    assert recorded.inputs["data"]["stage"] == "preprocess"
    assert recorded.config["tta"] == (dims == 2) and recorded.config["dims"] == dims


def test_stage_output_is_the_model_applied_to_the_stored_image(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    run_stage(model_dir, tiny_store["store"], tmp_path / "w", cases=["c1"], name="one")
    from udaseg.data.geometry import restore_label
    from udaseg.training.checkpoint import load_model

    model, _ = load_model(model_dir)
    store = Store(tiny_store["store"] / "store.h5")
    label = segment_volume(model, store.image("c1"), dims=2, patch_size=(16, 16))
    meta = store.meta("c1")
    expected = restore_label(label, meta["processed"], meta["original"], meta["assumed_direction"])
    written = sitk.ReadImage(str(tmp_path / "w" / "predict" / "one" / "c1.nii.gz"))
    # the class ids, as the dataset's codes
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(written), CODES[sitk.GetArrayFromImage(expected)]
    )
    assert sorted(p.name for p in (tmp_path / "w" / "predict" / "one").iterdir()) == [
        "c1.nii.gz", *LABEL_FILES, "manifest.json"]  # fmt: skip


def test_a_2_5d_model_predicts_from_the_slice_stacks_its_model_json_names(tiny_store, tmp_path):
    from udaseg.data.geometry import restore_label
    from udaseg.training.checkpoint import load_model

    model_dir = write_model_dir(tmp_path / "m", context_slices=1)
    work = tmp_path / "w"
    with pytest.warns(UserWarning, match="trained without flips"):
        manifest = run_stage(model_dir, tiny_store["store"], work, cases=["c1"], tta=True)
    assert manifest.config["in_channels"] == 3
    model, _ = load_model(model_dir)
    store = Store(tiny_store["store"] / "store.h5")
    label = segment_volume(model, store.image("c1"), dims=2, patch_size=(16, 16), in_channels=3,
                           tta_flips=(1, 2))  # fmt: skip
    meta = store.meta("c1")
    expected = restore_label(label, meta["processed"], meta["original"], meta["assumed_direction"])
    written = sitk.ReadImage(str(Path(manifest.summary["output"]) / "c1.nii.gz"))
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(written), CODES[sitk.GetArrayFromImage(expected)]
    )
    # an ensemble averages models that read the same input: a plain 2D member is refused
    plain = write_model_dir(tmp_path / "plain")
    with pytest.raises(UdasegError, match=r"--ensemble .*plain: its input channels \(1\)"):
        run_stage(model_dir, tiny_store["store"], work, cases=["c1"], ensemble=[plain], name="e")


def test_largest_component_keeps_one_body_per_class():
    label = np.zeros((4, 12, 12), dtype=np.uint8)
    label[0:3, 1:6, 1:6] = 1  # the organ
    label[3, 10, 10] = 1  # a detached island of the same class
    label[1, 6, 6] = 1  # touches the organ only at a corner: 26-connected, kept
    label[0:2, 8:12, 0:3] = 2  # a second class, one body
    label[3, 0, 11] = 2  # and its island
    out = keep_largest_component(label)
    expected = label.copy()
    expected[3, 10, 10] = 0
    expected[3, 0, 11] = 0
    np.testing.assert_array_equal(out, expected)
    assert out is not label and label[3, 10, 10] == 1  # a copy
    np.testing.assert_array_equal(keep_largest_component(np.zeros((2, 3, 3))), np.zeros((2, 3, 3)))


def test_stage_largest_component_option_post_processes_and_is_recorded(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    work = tmp_path / "w"
    plain = run_stage(model_dir, tiny_store["store"], work, cases=["c1"], name="plain")
    kept = run_stage(
        model_dir, tiny_store["store"], work, cases=["c1"], name="lcc", largest_component=True
    )
    assert kept.config["largest_component"] is True and plain.config["largest_component"] is False
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "predict" / "plain" / "c1.nii.gz")))
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "predict" / "lcc" / "c1.nii.gz")))
    np.testing.assert_array_equal(after, keep_largest_component(before))


def test_ensemble_averages_the_members_probabilities(tiny_store, tmp_path):
    from udaseg.training.checkpoint import load_model

    first = write_model_dir(tmp_path / "a", seed=0)
    second = write_model_dir(tmp_path / "b", seed=1)
    work = tmp_path / "w"
    # float32, as predict_volume below
    manifest = run_stage(first, tiny_store["store"], work, cases=["c1"], ensemble=[second],
                         name="ens", amp=False)  # fmt: skip
    store = Store(tiny_store["store"] / "store.h5")
    image = store.image("c1")
    total = sum(
        predict_volume(load_model(d)[0], image, dims=2, patch_size=(16, 16))
        for d in (first, second)
    )
    written = sitk.ReadImage(str(work / "predict" / "ens" / "c1.nii.gz"))
    from udaseg.data.geometry import restore_label

    meta = store.meta("c1")
    expected = restore_label(total.argmax(0).astype(np.uint8), meta["processed"], meta["original"],
                             meta["assumed_direction"])  # fmt: skip
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(written), CODES[sitk.GetArrayFromImage(expected)]
    )
    single = run_stage(first, tiny_store["store"], work, cases=["c1"], name="one")
    assert single.config["ensemble"] == []
    assert [m["path"] for m in manifest.config["ensemble"]] == [str(second.resolve())]
    assert manifest.inputs["ensemble0"]["path"] == str(second.resolve())
    # a member for other classes is refused, naming it
    other = write_model_dir(tmp_path / "c", classes=["x", "y"])
    with pytest.raises(UdasegError, match=r"--ensemble .*c: its classes"):
        run_stage(first, tiny_store["store"], work, cases=["c1"], ensemble=[other], name="bad")


def test_raw_data_is_preprocessed_in_memory_exactly_as_the_store(tiny_store, tmp_path):
    """The target domain's raw files (flipped y axis, direction diag(1, -1, 1)) give the same
    predictions as its preprocessed store, on the raw files' grid."""
    model_dir = write_model_dir(tmp_path / "m")
    work = tmp_path / "w"
    run_stage(model_dir, tiny_store["target"], work, name="store")
    manifest = str(tiny_store["manifest"])
    from_raw = run_stage(model_dir, tiny_store["raw"], work, dataset=manifest, domain="tgt")
    out = work / "predict" / "m__tiny__tgt"
    assert from_raw.summary["output"] == str(out) and from_raw.summary["cases"] == 3
    assert "data" not in from_raw.inputs  # raw files are no artifact: fingerprinted instead
    assert from_raw.config["data"]["kind"] == "raw" and from_raw.config["data"]["fingerprint"]
    for case in ("m0", "m1", "m2"):
        raw_file = tiny_store["raw"] / "tgt" / f"{case}_image.nii.gz"
        array = assert_on_original_grid(out / f"{case}.nii.gz", raw_file)
        stored = sitk.ReadImage(str(work / "predict" / "store" / f"{case}.nii.gz"))
        np.testing.assert_array_equal(array, sitk.GetArrayFromImage(stored))


def test_raw_data_needs_dataset_and_domain(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    with pytest.raises(UdasegError, match="needs --dataset and --domain") as exc:
        run_stage(model_dir, tiny_store["raw"], tmp_path / "w")
    assert exc.value.exit_code == 2


def test_rerun_skips_unless_forced_and_options_rebuild(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    work = tmp_path / "w"
    first = run_stage(model_dir, tiny_store["store"], work)
    assert first.summary["skipped"] is False
    again = run_stage(model_dir, tiny_store["store"], work, batch_size=2)  # runtime only
    assert again.summary["skipped"] is True
    assert run_stage(model_dir, tiny_store["store"], work, force=True).summary["skipped"] is False
    changed = run_stage(model_dir, tiny_store["store"], work, gaussian=False)
    assert changed.summary["skipped"] is False


def test_bf16_after_fp32_predicts_again(tiny_store, tmp_path, monkeypatch):
    """amp changes the numbers where it takes effect, so it is part of the result's identity."""
    monkeypatch.setenv("UDASEG_CPU_BF16", "1")  # where it takes effect: a CPU with native bf16
    model_dir = write_model_dir(tmp_path / "m")
    work = tmp_path / "w"
    fp32 = run_stage(model_dir, tiny_store["store"], work, amp=False)
    bf16 = run_stage(model_dir, tiny_store["store"], work, amp=True)
    assert fp32.summary["skipped"] is False and bf16.summary["skipped"] is False
    assert fp32.config_hash != bf16.config_hash and bf16.config["amp"] is True


def test_stale_model_directory_is_refused(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    with open(
        model_dir / "checkpoint_final.pt", "ab"
    ) as handle:  # the file no longer matches its manifest record
        handle.write(b"0")
    with pytest.raises(artifacts.StaleInputError, match="out of date: checkpoint_final.pt changed"):
        run_stage(model_dir, tiny_store["store"], tmp_path / "w")


def test_model_directory_without_manifest_is_fingerprinted(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m", artifact=False)
    work = tmp_path / "w"
    done = run_stage(model_dir, tiny_store["store"], work)
    assert "model" not in done.inputs and done.config["model"]["fingerprint"]
    assert run_stage(model_dir, tiny_store["store"], work).summary["skipped"] is True
    write_model_dir(tmp_path / "m2", artifact=False, seed=1)  # new weights in the same place
    shutil.copy(tmp_path / "m2" / "checkpoint_final.pt", model_dir / "checkpoint_final.pt")
    assert run_stage(model_dir, tiny_store["store"], work).summary["skipped"] is False


def test_stale_store_is_refused_unless_forced(store_copy, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    store_file = store_copy / "store.h5"
    store_file.write_bytes(store_file.read_bytes())  # same bytes, new mtime: still fine
    run_stage(model_dir, store_copy, tmp_path / "w")
    manifest = json.loads((store_copy / "manifest.json").read_text())
    manifest["outputs"]["store.h5"]["sha256"] = "0" * 64  # as if the store had been rewritten
    manifest["outputs"]["store.h5"]["mtime_ns"] = 0
    (store_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(artifacts.StaleInputError, match="store.h5 changed content"):
        run_stage(model_dir, store_copy, tmp_path / "w")
    with pytest.warns(UserWarning, match="used anyway"):
        done = run_stage(model_dir, store_copy, tmp_path / "w", force=True)
    assert done.summary["cases"] == 4


def test_unfinished_store_folder_is_refused(store_copy, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    (store_copy / "manifest.json").unlink()
    with pytest.raises(artifacts.StaleInputError, match="was never finished|does not exist"):
        run_stage(model_dir, store_copy, tmp_path / "w")
    # a bare store file outside an artifact is accepted (tracked by its size and mtime); nothing
    # records its manifest (nor does the model), so its codes are unknown: class ids, said once
    logs = Logged()
    config = stage.PredictConfig(model_dir=model_dir, data=store_copy / "store.h5", device="cpu")
    done = stage.run(config, tmp_path / "w", progress=logs)
    assert "data" not in done.inputs and done.config["data"]["fingerprint"]
    assert done.summary["label_values"] == "class-ids"
    (notice,) = [line for line in logs.lines if "class ids" in line]
    assert "no dataset manifest is recorded for --data" in notice and "\n" not in notice
    out = Path(done.summary["output"])
    for case in ("c0", "c3"):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        assert set(np.unique(array).tolist()) <= {0, 1, 2}
    assert read_itksnap(out / "labels.itksnap.txt") == {0: "background", 1: "organ_a", 2: "organ_b"}


def test_model_and_data_must_agree_on_classes_and_view(tiny_store, tmp_path):
    other = write_model_dir(tmp_path / "liver", classes=["liver", "spleen"])
    with pytest.raises(UdasegError, match=r"predicts classes \['liver', 'spleen'\] but data"):
        run_stage(other, tiny_store["store"], tmp_path / "w")
    coronal = write_model_dir(tmp_path / "coronal", view="coronal")
    with pytest.raises(UdasegError, match="trained on coronal slices .* stored axial"):
        run_stage(coronal, tiny_store["store"], tmp_path / "w")


def test_bad_options_are_named(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    store = tiny_store["store"]
    with pytest.raises(UdasegError, match='unknown checkpoint "bset" \\(did you mean "best"'):
        run_stage(model_dir, store, tmp_path / "w", checkpoint="bset")
    with pytest.raises(UdasegError, match="--cases: c9 not in the data"):
        run_stage(model_dir, store, tmp_path / "w", cases=["c1", "c9"])
    with pytest.raises(UdasegError, match="needs 2 positive voxel counts"):
        run_stage(model_dir, store, tmp_path / "w", stride=(4, 4, 4))
    with pytest.raises(UdasegError, match="holds no model.json"):
        run_stage(tmp_path, store, tmp_path / "w")
    with pytest.raises(UdasegError, match="not a plain folder name"):
        run_stage(model_dir, store, tmp_path / "w", name="a/b")
    assert parse_stride("0.25") == 0.25 and parse_stride("8,16") == (8, 16)
    with pytest.raises(UdasegError, match='--device "gpu"'):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UdasegError, match="sees no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == "cpu"
    with pytest.raises(UdasegError, match="fraction of the window"):
        parse_stride("16")


def test_text_options_become_the_values_the_stage_uses(tmp_path):
    def config(**options) -> stage.PredictConfig:
        return stage.PredictConfig(model_dir=tmp_path, data=tmp_path, **options)

    text = config(stride="8,16", cases="c1, c2", shard="1/2")
    assert text.stride == (8, 16) and text.cases == ["c1", "c2"] and text.shard == (1, 2)
    assert text == config(stride=(8, 16), cases=["c1", "c2"], shard=(1, 2))
    assert config(stride="0.25").stride == 0.25 and config(cases="").cases is None
    with pytest.raises(UdasegError, match='--shard "1-2" must look like i/n') as caught:
        config(shard="1-2")
    assert caught.value.exit_code == 2


def test_checkpoint_falls_back_like_load_model(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m", artifact=False)
    (model_dir / "checkpoint_final.pt").rename(model_dir / "checkpoint_latest.pt")
    done = run_stage(model_dir, tiny_store["store"], tmp_path / "w", checkpoint="best")
    assert done.summary["checkpoint"] == "checkpoint_latest.pt"


def test_shards_partition_the_cases_and_merge_into_the_full_run(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "m")
    work = tmp_path / "w"
    full = run_stage(model_dir, tiny_store["store"], work, name="full")
    for i in range(2):
        part = run_stage(model_dir, tiny_store["store"], work, name="sharded", shard=(i, 2))
        assert part.summary["case_ids"] == ["c0", "c1", "c2", "c3"][i::2]
        assert (work / "predict" / f"sharded__shard-{i}-of-2" / "manifest.json").is_file()
    merged = run_stage(model_dir, tiny_store["store"], work, name="sharded", merge_shards=True)
    assert merged.summary["cases"] == 4 and len(merged.inputs) == 2
    # the merged artifact is what the unsharded run would have written: that run skips it
    again = run_stage(model_dir, tiny_store["store"], work, name="sharded")
    assert again.summary["skipped"] is True
    for case in full.summary["case_ids"]:
        a = (work / "predict" / "full" / f"{case}.nii.gz").read_bytes()
        assert (work / "predict" / "sharded" / f"{case}.nii.gz").read_bytes() == a
    for name in ("labels.itksnap.txt", "labels.ctbl"):  # the same table, made for the merged run
        text = (work / "predict" / "sharded" / name).read_text()
        assert "sharded (2 shards merged)" in text
        assert (
            text.splitlines()[3:] == (work / "predict" / "full" / name).read_text().splitlines()[3:]
        )
    assert merged.summary["label_table"] == full.summary["label_table"] == {
        "background": 0, "organ_a": 5, "organ_b": 7}  # fmt: skip
    shutil.rmtree(work / "predict" / "sharded__shard-1-of-2")
    with pytest.raises(UdasegError, match="shards missing: sharded__shard-1-of-2"):
        run_stage(model_dir, tiny_store["store"], work, name="sharded", merge_shards=True)


# --- label values: the dataset's codes or class ids, and the files that name them -----------------

ABDOMEN_MANIFEST = """
name: abdomen
view: axial
classes: [liver, right_kidney, left_kidney, spleen]
domains:
  ct:
    modality: CT
    reader: nifti
    images: ct/{case}_image.nii.gz
    labels: ct/{case}_label.nii.gz
    label_map: {6: liver, 2: right_kidney, 3: left_kidney, 1: spleen, 4: background}
    intensity: {method: minmax, percentiles: [0.5, 99.5], over: body}
  mr:
    modality: MR
    reader: nifti
    images: mr/{case}_image.nii.gz
    labels: mr/{case}_label.nii.gz
    label_map: {1: liver, 2: right_kidney, 3: left_kidney, 4: spleen}
    intensity: {method: minmax, percentiles: [0.5, 99.5], over: body}
geometry:
  inplane_mm: null
  through_plane_mm: null
  crop: {method: none}
splits: {val_fraction: 0.0, seed: 0}
"""
ABDOMEN = ["liver", "right_kidney", "left_kidney", "spleen"]
CT_CODES = {"background": 0, "liver": 6, "right_kidney": 2, "left_kidney": 3, "spleen": 1}
MR_CODES = {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}


def abdomen_codes(domain: str, shift: int = 0, shape=(6, 20, 24)) -> np.ndarray:
    """Four organs in ``domain``'s codes (BTCV-like CT with a gallbladder, 4, that the manifest
    maps to background; CHAOS-like MR), shifted by ``shift`` columns."""
    codes = CT_CODES if domain == "ct" else MR_CODES
    label = np.zeros(shape, np.int16)
    label[1:5, 2:8, 2 + shift : 8 + shift] = codes["liver"]
    label[1:5, 10:14, 3:7] = codes["right_kidney"]
    label[1:5, 10:14, 15:19] = codes["left_kidney"]
    label[2:4, 3:6, 17:22] = codes["spleen"]
    if domain == "ct":
        label[3, 16:18, 10:12] = 4
    return label


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory) -> dict:
    """A two-case CT and MR dataset in their own codes, preprocessed into W/preprocessed."""
    root = tmp_path_factory.mktemp("abdomen")
    raw = root / "raw"
    for domain in ("ct", "mr"):
        for i, case in enumerate(("a", "b")):
            label = abdomen_codes(domain, shift=i)
            image = (100.0 + 20.0 * label + np.arange(label.shape[2])).astype(np.float32)
            write_nifti(image, raw / domain / f"{case}_image.nii.gz", origin=(4.0, -2.0, 9.0))
            write_nifti(label, raw / domain / f"{case}_label.nii.gz", origin=(4.0, -2.0, 9.0))
    manifest = root / "abdomen.yaml"
    manifest.write_text(ABDOMEN_MANIFEST)
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=raw), root / "w")
    stores = {d: root / "w" / "preprocessed" / f"abdomen__{d}" for d in ("ct", "mr")}
    return {"raw": raw, "manifest": manifest, "stores": stores}


class Logged(NullProgress):
    """Keeps the lines a stage logs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def read_label(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_itksnap(path: Path) -> dict[int, str]:
    """value -> name of an ITK-SNAP label description file, each line checked for its 8 fields."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split(None, 7)
        assert len(fields) == 8 and fields[7][0] == fields[7][-1] == '"', line
        rows[int(fields[0])] = fields[7][1:-1]
    return rows


def read_ctbl(path: Path) -> dict[int, tuple[str, tuple[int, ...]]]:
    """value -> (name, (r, g, b, a)) of a 3D Slicer colour table."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# Color table file")
    rows = {}
    for line in lines:
        if line.startswith("#"):
            continue
        value, name, *rgba = line.split()
        assert len(rgba) == 4, line
        rows[int(value)] = (name, tuple(int(c) for c in rgba))
    assert lines[1] == f"# {len(rows)} values"
    return rows


def test_predictions_hold_the_dataset_codes_of_the_predicted_domain(abdomen, tmp_path):
    """The stored label through the 'identity on labels' model, written as each domain's codes:
    exactly the original label file, its background-mapped code (the CT's 4) as 0."""
    manifest = load_manifest(abdomen["manifest"])
    for domain in ("ct", "mr"):
        store = Store(abdomen["stores"][domain] / "store.h5")
        cases = [CaseInput(c, store.label(c).astype(np.float32), store.meta(c)) for c in "ab"]
        segment = functools.partial(segment_volume, OneHot(5), dims=2, patch_size=(16, 16))
        out = tmp_path / domain
        out.mkdir()
        stage.predict_cases(cases, segment, out, values=dataset_codes(manifest, domain))
        for case in ("a", "b"):
            original = sitk.ReadImage(str(abdomen["raw"] / domain / f"{case}_label.nii.gz"))
            codes = sitk.GetArrayFromImage(original)
            written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
            expected = np.where(codes == 4, 0, codes) if domain == "ct" else codes
            np.testing.assert_array_equal(written, expected)
            assert (6 in written) == (domain == "ct")  # CT liver is 6; MR's codes are 1..4


def test_stage_writes_codes_by_default_and_class_ids_when_asked(abdomen, tmp_path):
    model_dir = write_model_dir(tmp_path / "m", classes=ABDOMEN)
    work, store = tmp_path / "w", abdomen["stores"]["ct"]
    codes = run_stage(model_dir, store, work, name="codes")
    ids = run_stage(model_dir, store, work, name="ids", label_values="class-ids")
    assert codes.summary["label_values"] == "dataset-codes"
    assert codes.summary["label_table"] == CT_CODES
    assert ids.summary["label_values"] == "class-ids"
    ids_table = [(c, i) for i, c in enumerate(["background", *ABDOMEN])]
    assert list(ids.summary["label_table"].items()) == ids_table
    # the choice is part of the result's identity
    assert codes.config["label_values"] == "dataset-codes"
    assert codes.config["written"]["label_table"] == CT_CODES
    assert codes.config_hash != ids.config_hash
    lut = np.array(list(CT_CODES.values()), np.uint8)
    for case in ("a", "b"):
        as_codes = read_label(work / "predict" / "codes" / f"{case}.nii.gz")
        as_ids = read_label(work / "predict" / "ids" / f"{case}.nii.gz")
        assert as_ids.max() <= 4 and len(np.unique(as_ids)) > 1
        np.testing.assert_array_equal(as_codes, lut[as_ids])
    # MR's codes are its class ids, written under their own name
    mr = run_stage(model_dir, abdomen["stores"]["mr"], work, name="mr")
    assert mr.summary["label_values"] == "dataset-codes" and mr.summary["label_table"] == MR_CODES


def test_evaluate_scores_both_kinds_of_one_prediction_alike(abdomen, tmp_path):
    """Codes and class ids of the same predictions, each read back as its run recorded."""
    from udaseg.stages import evaluate

    model_dir = write_model_dir(tmp_path / "m", classes=ABDOMEN)
    work = tmp_path / "w"
    scores = {}
    for name in ("dataset-codes", "class-ids"):
        run_stage(model_dir, abdomen["stores"]["ct"], work, name=name, label_values=name)
        config = evaluate.EvaluateConfig(
            pred=work / "predict" / name, ref=abdomen["raw"], dataset=str(abdomen["manifest"]),
            domain="ct", metric="dice,hd95", name=name,
        )  # fmt: skip
        scores[name] = evaluate.run(config, work).summary
        assert scores[name]["pred"]["label_values"] == name
    assert scores["dataset-codes"]["per_class"] == scores["class-ids"]["per_class"]
    dice = [c["dice"]["mean"] for c in scores["class-ids"]["per_class"].values()]
    assert any(d > 0 for d in dice)  # something was found, so the agreement means something


def test_label_files_list_exactly_the_written_values_with_class_names(abdomen, tmp_path):
    """labels.itksnap.txt and labels.ctbl name background and each class with the value
    written; a class has one colour whatever its value (CT liver 6 and MR liver 1 alike)."""
    model_dir = write_model_dir(tmp_path / "m", classes=ABDOMEN)
    work = tmp_path / "w"
    tables = {}
    for name, store, options in (
        ("ct", abdomen["stores"]["ct"], {}),
        ("mr", abdomen["stores"]["mr"], {}),
        ("ids", abdomen["stores"]["ct"], {"label_values": "class-ids"}),
    ):
        done = run_stage(model_dir, store, work, name=name, **options)
        out = work / "predict" / name
        itksnap, ctbl = read_itksnap(out / "labels.itksnap.txt"), read_ctbl(out / "labels.ctbl")
        written = {v: c for c, v in done.summary["label_table"].items()}
        assert itksnap == written and {v: n for v, (n, _) in ctbl.items()} == written
        assert set(done.outputs) >= {"labels.itksnap.txt", "labels.ctbl"}
        tables[name] = {n: rgba for n, rgba in ctbl.values()}
    assert read_itksnap(work / "predict" / "ct" / "labels.itksnap.txt")[6] == "liver"
    assert tables["ct"] == tables["mr"] == tables["ids"]
    assert tables["ct"]["background"] == (0, 0, 0, 0)
    colours = [tables["ct"][c][:3] for c in ABDOMEN]
    assert colours == class_colours(4) and len(set(colours)) == 4
    assert all(tables["ct"][c][3] == 255 for c in ABDOMEN)


def test_label_file_formats_spell_names_as_the_viewers_read_them():
    values = class_ids(["left kidney", 'the "core"'], "x")
    itksnap = itksnap_text(values, "a test").splitlines()
    assert all(line.startswith("#") for line in itksnap[:-3])
    assert itksnap[-3].split() == ["0", "0", "0", "0", "0", "0", "0", '"background"']
    red, green, blue = class_colours(2)[0]
    assert itksnap[-2].split(None, 7) == [
        "1", str(red), str(green), str(blue), "1", "1", "1", '"left kidney"'
    ]  # fmt: skip
    assert itksnap[-1].endswith("\"the 'core'\"")
    ctbl = slicer_text(values, "a test").splitlines()
    assert ctbl[:2] == ["# Color table file labels.ctbl", "# 3 values"]
    assert ctbl[-2].split()[:2] == ["1", "left_kidney"] and ctbl[-1].split()[1] == 'the_"core"'


def test_class_colours_are_the_reports():
    """The viewers' colours are those of `udaseg report`'s figures (matplotlib's tab10/tab20)."""
    colormaps = pytest.importorskip("matplotlib").colormaps
    for n in (1, 4, 10, 11, 25):
        cmap = colormaps["tab10" if n <= 10 else "tab20"]
        want = [tuple(round(255 * c) for c in cmap(i % cmap.N)[:3]) for i in range(n)]
        assert class_colours(n) == want


def test_label_values_option_is_checked(tmp_path):
    def config(value):
        return stage.PredictConfig(model_dir=tmp_path, data=tmp_path, label_values=value)

    assert config("Class-IDs").label_values == "class-ids"
    with pytest.raises(UdasegError, match='unknown --label-values "codes"') as caught:
        config("codes")
    assert caught.value.exit_code == 2 and "dataset-codes" in caught.value.hint


# --- command line --------------------------------------------------------------------------------


def test_cli_json_summary(tiny_store, tmp_path):
    model_dir = write_model_dir(tmp_path / "unet")
    args = [
        "predict", "--model-dir", str(model_dir), "--data", str(tiny_store["store"]),
        "--work", str(tmp_path / "w"), "--device", "cpu", "--stride", "0.25", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["cases"] == 4 and summary["run"] == "unet__tiny__src"
    assert summary["skipped"] is False and summary["device"] == "cpu"
    assert summary["label_values"] == "dataset-codes"
    again = json.loads(CliRunner().invoke(app, args).stdout)
    assert again["skipped"] is True
    ids = json.loads(CliRunner().invoke(app, [*args, "--label-values", "class-ids"]).stdout)
    assert ids["skipped"] is False and ids["label_values"] == "class-ids"


def test_cli_unknown_checkpoint_is_a_usage_error(tiny_store, tmp_path, monkeypatch, capsys):
    model_dir = write_model_dir(tmp_path / "m")
    monkeypatch.setattr(sys, "argv", ["udaseg", "predict", "--model-dir", str(model_dir),
                                      "--data", str(tiny_store["store"]), "--work",
                                      str(tmp_path / "w"), "--checkpoint", "bset"])  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert 'unknown checkpoint "bset"' in capsys.readouterr().err


def test_real_unet_when_it_exists(tiny_store, tmp_path):
    """The built-in 2D U-Net (once it lands) runs through the stage with its tiny settings."""
    try:
        spec = registry.model_spec("unet2d.v1")
    except UdasegError:
        pytest.skip("unet2d.v1 is not registered yet")
    kwargs = {"in_channels": 1, "num_classes": 3, **spec.tiny}
    model = registry.create_model("unet2d.v1", **kwargs)
    folder = tmp_path / "unet"
    folder.mkdir()
    info = {
        "name": "unet2d.v1", "kwargs": kwargs, "dims": 2, "classes": CLASSES, "num_classes": 3,
        "in_channels": 1, "dataset": "tiny", "view": "axial", "patch_size": [32, 32],
    }  # fmt: skip
    write_model_json(folder, info)
    save_checkpoint(folder / "checkpoint_final.pt",
                    {"model": {"name": "unet2d.v1", "kwargs": kwargs},
                     "state_dict": model.state_dict()})  # fmt: skip
    done = run_stage(folder, tiny_store["store"], tmp_path / "w")
    assert done.summary["cases"] == 4
