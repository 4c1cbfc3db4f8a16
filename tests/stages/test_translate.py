"""The translation stages: `translate train`, `cluster-styles`, `translate apply` and their CLI.

The stages are tested with two TEST-ONLY translators registered here (``test-styled.v0`` with
style codes, ``test-plain.v0`` without): 1x1-convolution generators, a style encoder (global mean
and std -> linear), a one-layer patch discriminator per domain, following the registry contract
exactly; every registered real method also gets a short smoke run through all stages.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from tests.conftest import KillAt, write_tiny_dataset
from udaseg import artifacts
from udaseg.cli import app
from udaseg.data.sampling import middle_slices
from udaseg.data.store import Store
from udaseg.errors import UdasegError
from udaseg.losses.gan import discriminator_loss, gan_loss, set_requires_grad
from udaseg.models.registry import model_spec
from udaseg.stages import cluster_styles, preprocess, segment_train, translate_apply
from udaseg.stages import translate_train as train_stage
from udaseg.training.checkpoint import load_checkpoint
from udaseg.translation.io import load_translator, pad_to_multiple, render_volume
from udaseg.translation.registry import (
    constructor_kwargs,
    list_translators,
    register_translator,
    translator_spec,
)

# --- test-only translators -----------------------------------------------------------------------


class TinyTranslator(nn.Module):
    """Source -> target: tanh(conv1x1(x) * (1 + gain) + shift), gain and shift from the style
    code (style codes: linear of each image's mean and std); target -> source: tanh(conv1x1)."""

    def __init__(self, styled: bool, style_dim: int = 2, lambda_cycle: float = 10.0) -> None:
        super().__init__()
        self.styled, self.lambda_cycle = styled, float(lambda_cycle)
        self.to_target, self.to_source = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1)
        self.style_encoder = nn.Linear(2, style_dim)
        self.style_affine = nn.Linear(style_dim, 2)
        self.register_buffer("mean_style", torch.zeros(style_dim))
        self.disc_target, self.disc_source = self._disc(), self._disc()

    @staticmethod
    def _disc() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 2, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(2, 1, 3, 1, 1))

    def optimizers(self, hparams):
        betas = tuple(hparams["betas"])
        generator = [
            p
            for m in (self.to_target, self.to_source, self.style_encoder, self.style_affine)
            for p in m.parameters()
        ]
        discriminator = [*self.disc_target.parameters(), *self.disc_source.parameters()]
        return {
            "generator": torch.optim.Adam(generator, lr=hparams["lr_g"], betas=betas),
            "discriminator": torch.optim.Adam(discriminator, lr=hparams["lr_d"], betas=betas),
        }

    def encode_style(self, images, domain="target"):
        # one encoder for both domains: enough for a fake that only has to follow the contract
        return self.style_encoder(torch.stack([images.mean((1, 2, 3)), images.std((1, 2, 3))], 1))

    def translate(self, source, style=None):
        out = self.to_target(source)
        if self.styled:
            style = self.mean_style.expand(len(source), -1) if style is None else style
            gain, shift = self.style_affine(style).unbind(1)
            out = out * (1 + gain[:, None, None, None]) + shift[:, None, None, None]
        return torch.tanh(out)

    def translate_back(self, target, style=None):
        return torch.tanh(self.to_source(target))

    def train_step(self, source, target, optimizers, autocast):
        style = self.encode_style(target) if self.styled else None
        discriminators = [self.disc_target, self.disc_source]
        set_requires_grad(discriminators, False)
        with autocast():
            fake_t, fake_s = self.translate(source, style), self.translate_back(target)
            adv = gan_loss(self.disc_target(fake_t), True) + gan_loss(
                self.disc_source(fake_s), True
            )
            cycle = F.l1_loss(self.translate_back(fake_t), source) + F.l1_loss(
                self.translate(fake_s, style), target
            )
            generator_loss = adv + self.lambda_cycle * cycle
        optimizers["generator"].zero_grad(set_to_none=True)
        generator_loss.backward()
        optimizers["generator"].step()
        set_requires_grad(discriminators, True)
        with autocast():
            d_loss = discriminator_loss(
                self.disc_target(target), self.disc_target(fake_t.detach())
            ) + discriminator_loss(self.disc_source(source), self.disc_source(fake_s.detach()))
        optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["discriminator"].step()
        if self.styled:
            with torch.no_grad():
                self.mean_style.lerp_(style.mean(0), 0.1)
        total = generator_loss + d_loss
        return {"adv": adv, "cycle": cycle, "discriminator": d_loss, "total": total}

    @torch.no_grad()
    def samples(self, source, target):
        translated = self.translate(source, self.encode_style(target) if self.styled else None)
        return {
            "source": source,
            "translated": translated,
            "reconstructed": self.translate_back(translated),
            "target": target,
        }


TEST_HPARAMS = {
    "lr_g": 5e-3,
    "lr_d": 5e-3,
    "betas": [0.5, 0.999],
    "batch_size": 2,
    "patch_size": [32, 32],
    "steps": 4,
    "schedule": "constant",
    "lambda_cycle": 5.0,
}


def build_styled(style_dim: int = 2, lambda_cycle: float = 10.0) -> TinyTranslator:
    """Test-only translator with style codes."""
    return TinyTranslator(True, style_dim, lambda_cycle)


def build_plain(lambda_cycle: float = 10.0) -> TinyTranslator:
    """Test-only translator with one fixed style."""
    return TinyTranslator(False, lambda_cycle=lambda_cycle)


for _name, _builder, _styled in (
    ("test-styled.v0", build_styled, True),
    ("test-plain.v0", build_plain, False),
):
    with contextlib.suppress(ValueError):  # this module imported twice in one session
        register_translator(_name, has_style_codes=_styled, hparams=TEST_HPARAMS)(_builder)


def real_methods() -> list[str]:
    """Every registered translator but this module's stand-ins."""
    return [n for n in list_translators() if not n.startswith("test-")]


# --- a workspace shared by the module: stores and two trained translators ---------------------


@dataclass
class Workspace:
    work: Path
    source: Path
    target: Path
    styled: Path
    plain: Path


def train_config(ws_or_stores, method="test-styled.v0", **overrides):
    source, target = ws_or_stores
    base = dict(
        method=method,
        source=source,
        target=target,
        hparams={"steps": 4},
        sample_every=2,
        sample_count=3,
        sample_styles=2,
        checkpoint_every=2,
        log_every=1,
        device="cpu",
        seed=1,
    )
    base.update(overrides)
    return train_stage.TranslateTrainConfig(**base)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("translate")
    manifest = write_tiny_dataset(root / "raw")
    work = root / "w"
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=root / "raw"), work)
    source, target = work / "preprocessed" / "tiny__src", work / "preprocessed" / "tiny__tgt"
    styled = train_stage.run(train_config((source, target)), work).summary["output"]
    plain = train_stage.run(train_config((source, target), "test-plain.v0"), work)
    return Workspace(work, source, target, Path(styled), Path(plain.summary["output"]))


def weights(run: Path, which: str = "final") -> dict:
    return load_checkpoint(run / f"checkpoint_{which}.pt")["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# --- translate train -----------------------------------------------------------------------------


def test_train_writes_checkpoints_samples_metrics_and_model_json(ws):
    run = ws.styled
    assert run.name == "test-styled.v0__tiny_src__to__tgt"
    names = {p.name for p in run.iterdir()}
    assert names == {
        "checkpoint_latest.pt",
        "checkpoint_final.pt",
        "model.json",
        "metrics.jsonl",
        "manifest.json",
        "samples",
    }
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["step_000002.png", "step_000004.png"]
    assert (run / "samples" / samples[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = log_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"adv", "cycle", "discriminator", "total", "lr"} <= set(rows[0])
    info = json.loads((run / "model.json").read_text())
    # the hparams' loss weight reaches the constructor (and so the checkpoint)
    assert info["kwargs"] == {"lambda_cycle": 5.0} and info["has_style_codes"]
    assert info["patch_size"] == [32, 32] and info["hparams"]["steps"] == 4
    assert info["source"]["domain"] == "src" and info["target"]["domain"] == "tgt"
    assert info["target"]["classes"] == ["organ_a", "organ_b"]
    manifest = artifacts.load_manifest(run)
    assert manifest.stage == "translate-train" and set(manifest.inputs) == {"source", "target"}
    translator, spec = load_translator(run)
    assert spec == {"name": "test-styled.v0", "kwargs": {"lambda_cycle": 5.0}}
    assert not translator.training and translator.lambda_cycle == 5.0


def test_constructor_kwargs_take_hparams_weights_and_method_args_win():
    kwargs = constructor_kwargs("test-styled.v0", TEST_HPARAMS, {"lambda_cycle": 1})
    assert kwargs == {"lambda_cycle": 1}
    if "cyclegan.v1" in real_methods():  # weights live in the base class behind **kwargs
        spec = translator_spec("cyclegan.v1")
        assert "lambda_cycle" in constructor_kwargs("cyclegan.v1", spec.hparams, {})


def test_set_keys_are_hparams_or_constructor_arguments(ws):
    stores = (ws.source, ws.target)
    # a loss weight is an hparams key: the run trains with it and records it there
    config = train_config(stores, hparams={"steps": 4, "lambda_cycle": 2.0})
    hparams = train_stage.resolved_hparams(config)
    assert hparams["lambda_cycle"] == 2.0 and TEST_HPARAMS["lambda_cycle"] != 2.0
    assert train_stage.show_defaults(config) == {
        "hparams": hparams,
        "kwargs": {"lambda_cycle": 2.0},
    }
    # a constructor-only argument reaches the constructor and stays out of the hparams
    styled = train_config(stores, hparams={"style_dim": 4})
    assert "style_dim" not in train_stage.resolved_hparams(styled)
    assert train_stage.show_defaults(styled)["kwargs"] == {"style_dim": 4, "lambda_cycle": 5.0}
    # sizes as text (what --set patch_size=16,16 gives) become lists of ints
    for text in ("16,16", "16x16"):
        sized = train_config(stores, hparams={"patch_size": text})
        assert train_stage.resolved_hparams(sized)["patch_size"] == [16, 16]
    # anything else is refused, with both kinds of key offered
    with pytest.raises(UdasegError, match='did you mean "style_dim"') as caught:
        train_stage.resolved_hparams(train_config(stores, hparams={"style_dm": 4}))
    assert "lr_g" in caught.value.hint and caught.value.exit_code == 2
    plain = train_config(stores, "test-plain.v0", hparams={"style_dim": 4})
    with pytest.raises(UdasegError, match='unknown --set key "style_dim"'):
        train_stage.show_defaults(plain)


def test_resume_after_a_kill_gives_identical_weights_and_log(ws):
    options = dict(hparams={"steps": 6}, checkpoint_every=3)
    stores = (ws.source, ws.target)
    train_stage.run(train_config(stores, name="whole", **options), ws.work)
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(train_config(stores, name="cut", **options), ws.work, progress=KillAt(5))
    partial = ws.work / "translate" / "cut.partial"
    assert load_checkpoint(partial / "checkpoint_latest.pt")["step"] == 3
    resumed = train_stage.run(train_config(stores, name="cut", resume=True, **options), ws.work)
    assert resumed.summary["steps"] == 6
    whole, cut = ws.work / "translate" / "whole", ws.work / "translate" / "cut"
    assert same_weights(weights(whole), weights(cut))
    assert log_rows(whole) == log_rows(cut)
    saved = load_checkpoint(cut / "checkpoint_final.pt")
    assert saved["step"] == 6 and set(saved["training"]["optimizers"]) == {
        "generator",
        "discriminator",
    }
    assert saved["training"]["optimizers"]["generator"]["state"]


def test_a_current_run_is_skipped_unless_forced(ws):
    config = train_config((ws.source, ws.target), "test-plain.v0")
    assert train_stage.run(config, ws.work).summary["skipped"]
    forced = train_stage.run(config, ws.work, force=True).summary
    assert not forced["skipped"] and forced["output"] == str(ws.plain)


def test_train_refuses_bad_options(ws):
    stores = (ws.source, ws.target)
    with pytest.raises(UdasegError, match='did you mean "steps"'):
        train_stage.run(train_config(stores, hparams={"stepz": 2}), ws.work)
    with pytest.raises(UdasegError, match="2D slices"):
        train_stage.run(train_config(stores, hparams={"patch_size": [4, 32, 32]}), ws.work)
    with pytest.raises(UdasegError, match='did you mean "test-plain.v0"'):
        train_stage.run(train_config(stores, method="test-plain.v1"), ws.work)


# --- opt-in semantic consistency ----------------------------------------------------------------


@pytest.fixture(scope="module")
def source_segmenter(ws) -> Path:
    return Path(tiny_segment_train(ws.work, ws.source, "source", "seg-src")["output"])


def semantic_config(ws, segmenter, **overrides):
    base = dict(
        method="attention-cyclegan.v1",
        hparams={
            **translator_spec("attention-cyclegan.v1").tiny,
            "steps": 4,
            "batch_size": 2,
            "patch_size": [32, 32],
        },
        semantic_segmenter=segmenter,
        sample_every=0,
        checkpoint_every=2,
    )
    return train_config((ws.source, ws.target), **{**base, **overrides})


@pytest.mark.skipif(
    "attention-cyclegan.v1" not in real_methods(), reason="attention-cyclegan.v1 not built"
)
def test_semantic_segmenter_trains_with_source_labels_and_resumes_exactly(ws, source_segmenter):
    whole = train_stage.run(semantic_config(ws, source_segmenter, name="sem"), ws.work)
    run = Path(whole.summary["output"])
    info = json.loads((run / "model.json").read_text())
    assert info["kwargs"]["lambda_semantic"] == 1.0  # CyCADA's weight when none is given
    assert set(artifacts.load_manifest(run).inputs) == {"source", "target", "semantic_segmenter"}
    assert {"semantic_s", "semantic_t"} <= set(log_rows(run)[-1])
    assert not any("semantic" in key for key in weights(run))
    # a killed run resumes to the same weights: the segmenter is attached again, not restored
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(
            semantic_config(ws, source_segmenter, name="sem-cut"), ws.work, progress=KillAt(3)
        )
    resumed = semantic_config(ws, source_segmenter, name="sem-cut", resume=True)
    cut = Path(train_stage.run(resumed, ws.work).summary["output"])
    assert same_weights(weights(run), weights(cut)) and log_rows(run) == log_rows(cut)
    # rendering needs no segmenter
    applied = translate_apply.run(
        translate_apply.TranslateApplyConfig(translator=run, device="cpu"), ws.work
    )
    assert Path(applied.summary["output"]).is_dir()


@pytest.mark.skipif(
    "attention-cyclegan.v1" not in real_methods(), reason="attention-cyclegan.v1 not built"
)
@pytest.mark.filterwarnings("ignore:input .* is out of date")
def test_semantic_segmenter_refusals(ws, source_segmenter):
    def refused(match: str, segmenter, force: bool = False, **overrides) -> None:
        config = semantic_config(ws, segmenter, name="refused", **overrides)
        with pytest.raises(UdasegError, match=match) as caught:
            train_stage.run(config, ws.work, force=force)
        assert caught.value.exit_code == 2
        assert not (ws.work / "translate" / "refused").exists()

    refused("not a model directory", ws.plain)
    # a segmenter that learnt the target's own labels would make the adaptation supervised
    # (the tiny target store has no labels, so an edited copy of the source segmenter stands
    # in; force lets the edited copy past the staleness check to the check under test)
    on_target = ws.work / "segment" / "seg-tgt"
    shutil.copytree(source_segmenter, on_target, dirs_exist_ok=True)
    info = json.loads((on_target / "model.json").read_text())
    (on_target / "model.json").write_text(json.dumps({**info, "domain": "tgt"}))
    refused("target's own labels", on_target, force=True)
    refused("no semantic-consistency term", source_segmenter, method="test-plain.v0", hparams={})
    tiny = {**translator_spec("attention-cyclegan.v1").tiny, "steps": 4, "patch_size": [32, 32]}
    refused("needs a frozen segmenter", None, hparams={**tiny, "lambda_semantic": 2.0})
    refused("lambda_semantic=0", source_segmenter, hparams={**tiny, "lambda_semantic": 0})


# --- cluster-styles ------------------------------------------------------------------------------


def cluster(ws, **overrides) -> Path:
    config = cluster_styles.ClusterStylesConfig(
        translator=ws.styled, styles=3, device="cpu", **overrides
    )
    return Path(cluster_styles.run(config, ws.work).summary["output"])


def test_cluster_styles_keeps_the_member_nearest_each_centre_deterministically(ws):
    first = cluster(ws, name="tsne")  # default embedding: t-SNE
    again = cluster(ws, name="pca", embedding="pca")
    chosen, codes = np.load(first / "centroids.npy"), np.load(first / "codes.npy")
    np.testing.assert_array_equal(chosen, np.load(again / "centroids.npy"))
    members = json.loads((first / "members.json").read_text())
    store = Store(ws.target / "store.h5")
    train = json.loads((ws.target / "splits.json").read_text())["train"]
    expected = [(c, k) for c in train for k in middle_slices(len(store.image(c)))]
    assert [(r["case"], r["slice"]) for r in members["slices"]] == expected
    assert chosen.shape == (3, 2) and codes.shape == (len(expected), 2)
    clusters = np.array([r["cluster"] for r in members["slices"]])
    distances = np.array([r["distance"] for r in members["slices"]])
    for style, pick in enumerate(members["chosen"]):
        assert pick["style"] == style and pick["cluster"] == style
        np.testing.assert_array_equal(chosen[style], codes[pick["index"]])
        assert pick["distance"] == distances[clusters == style].min()
    assert sum(members["cluster_sizes"]) == len(codes)
    assert (first / "styles.png").stat().st_size > 1000
    manifest = artifacts.load_manifest(first)
    assert manifest.stage == "cluster-styles" and set(manifest.inputs) == {"translator", "target"}
    randomly = cluster(ws, pick="random", embedding="pca")
    assert randomly.name == f"{ws.styled.name}__k3__random"
    picks = json.loads((randomly / "members.json").read_text())["chosen"]
    assert [p["cluster"] for p in picks] == [0, 1, 2]
    rerun = cluster_styles.run(
        cluster_styles.ClusterStylesConfig(translator=ws.styled, styles=3, name="tsne"), ws.work
    )
    assert rerun.summary["skipped"]


def test_middle_two_thirds():
    assert list(middle_slices(12)) == list(range(2, 10))
    assert list(middle_slices(1)) == [0]


def test_methods_without_style_codes_refuse_style_clustering(ws):
    config = cluster_styles.ClusterStylesConfig(translator=ws.plain, styles=3, device="cpu")
    with pytest.raises(UdasegError, match="has no style codes") as caught:
        cluster_styles.run(config, ws.work)
    assert caught.value.exit_code == 2 and "test-styled.v0" in caught.value.hint
    apply = translate_apply.TranslateApplyConfig(translator=ws.plain, styles=3, device="cpu")
    with pytest.raises(UdasegError, match="one fixed style, so --styles must be 1"):
        translate_apply.run(apply, ws.work)


# --- translate apply -----------------------------------------------------------------------------


def test_apply_writes_k_styled_copies_with_the_source_labels(ws):
    style_run = cluster(ws, name="for-apply", embedding="pca")
    config = translate_apply.TranslateApplyConfig(
        translator=ws.styled, style_run=style_run, batch_size=4, device="cpu"
    )
    summary = translate_apply.run(config, ws.work).summary
    out = Path(summary["output"])
    assert out.name == "for-apply" and summary["copies"] == 4 * 3
    store, source = Store(out / "store.h5"), Store(ws.source / "store.h5")
    assert store.case_ids == sorted(f"{c}__style{k}" for c in source.case_ids for k in range(3))
    assert store.domain == "src-to-tgt" and store.modality == "MR" and store.labelled
    assert store.classes == source.classes and store.view == source.view
    codes = np.load(style_run / "centroids.npy")
    translator, _ = load_translator(ws.styled)
    for case in source.case_ids:
        images = [store.image(f"{case}__style{k}") for k in range(3)]
        for k, image in enumerate(images):
            copy = f"{case}__style{k}"
            np.testing.assert_array_equal(store.label(copy), source.label(case))
            meta = store.meta(copy)
            assert meta["style_index"] == k and meta["source_case"] == case
            assert meta["translator"] == ws.styled.name
            assert meta["processed"] == source.meta(case)["processed"]  # geometry carried over
            assert image.shape == source.image(case).shape and image.dtype == np.float32
        assert not np.allclose(images[0], images[1])  # the styles differ
    expected = render_volume(translator, source.image("c0"), codes[2], batch_size=3, device="cpu")
    np.testing.assert_allclose(store.image("c0__style2"), expected, atol=1e-6)
    splits = json.loads((out / "splits.json").read_text())
    source_splits = json.loads((ws.source / "splits.json").read_text())
    assert splits["train"] == [f"{c}__style{k}" for c in source_splits["train"] for k in range(3)]
    assert splits["test"] == [f"{c}__style{k}" for c in source_splits["test"] for k in range(3)]
    manifest = artifacts.load_manifest(out)
    assert manifest.stage == "translate-apply"
    assert set(manifest.inputs) == {"translator", "source", "styles"}
    again = translate_apply.run(config, ws.work)
    assert again.summary["skipped"]
    with pytest.raises(UdasegError, match="holds 3 styles"):
        translate_apply.run(
            translate_apply.TranslateApplyConfig(
                translator=ws.styled, style_run=style_run, styles=2
            ),
            ws.work,
        )


def tiny_segment_train(work: Path, store: Path, train_on: str, name: str | None = None) -> dict:
    """Two steps of a tiny unet2d.v1 on ``store``; the run's summary."""
    stores = {"translated": [store]} if train_on == "translated" else {train_on: store}
    config = segment_train.SegmentTrainConfig(
        model="unet2d.v1",
        train_on=train_on,
        **stores,
        hparams={
            **model_spec("unet2d.v1").tiny,
            "steps": 2,
            "batch_size": 2,
            "patch_size": [32, 32],
        },
        val_every=0,
        device="cpu",
        name=name,
    )
    return segment_train.run(config, work).summary


def test_segment_train_trains_on_a_translated_store(ws):
    config = translate_apply.TranslateApplyConfig(translator=ws.plain, device="cpu")
    out = Path(translate_apply.run(config, ws.work).summary["output"])
    assert out.name == f"{ws.plain.name}__k1"
    summary = tiny_segment_train(ws.work, out, "translated")
    assert summary["steps"] == 2 and summary["train_on"] == "translated"


def test_default_style_needs_no_style_run_but_k_above_one_does(ws):
    config = translate_apply.TranslateApplyConfig(translator=ws.styled, device="cpu")
    summary = translate_apply.run(config, ws.work).summary
    assert summary["styles"] == 1 and summary["run"] == f"{ws.styled.name}__default-style"
    with pytest.raises(UdasegError, match="--styles 2 needs the styles of a cluster-styles run"):
        translate_apply.run(
            translate_apply.TranslateApplyConfig(translator=ws.styled, styles=2), ws.work
        )


def test_sharded_apply_covers_every_case_once(ws):
    cases = []
    for i in range(2):
        config = translate_apply.TranslateApplyConfig(
            translator=ws.plain, shard=f"{i}/2", name="sharded", device="cpu"
        )
        out = Path(translate_apply.run(config, ws.work).summary["output"])
        assert out.name == f"sharded__shard-{i}-of-2"
        artifacts.require_input(out, stage="translate-apply", rerun="udaseg translate apply")
        store = Store(out / "store.h5")
        cases += store.case_ids
        splits = json.loads((out / "splits.json").read_text())
        assert set(splits["train"] + splits["val"] + splits["test"]) == set(store.case_ids)
    source = Store(ws.source / "store.h5")
    assert sorted(cases) == sorted(f"{c}__style0" for c in source.case_ids)


def test_padding_cuts_back_to_the_slice():
    images = np.arange(2 * 24 * 20, dtype=np.float32).reshape(2, 24, 20)
    padded, (rows, cols) = pad_to_multiple(images, 32)
    assert padded.shape == (2, 32, 32) and padded[0, 0, 0] == images[0].min()
    np.testing.assert_array_equal(padded[:, rows, cols], images)


def test_render_volume_takes_one_code_or_one_per_slice():
    from udaseg.translation.registry import create_translator

    torch.manual_seed(0)
    model = create_translator("disentangled.v1", **translator_spec("disentangled.v1").tiny).eval()
    volume = np.random.default_rng(0).uniform(-1, 1, (5, 18, 18)).astype(np.float32)
    with torch.no_grad():
        own = model.encode_style(torch.from_numpy(volume)[:, None, :16, :16], domain="source")
    codes = own.numpy()
    # batches of 2: per-slice codes must follow their slices across batch boundaries
    each = render_volume(model, volume, codes, 2, "cpu", back=True)
    for k in (0, 3, 4):
        one = render_volume(model, volume[k : k + 1], codes[k], 2, "cpu", back=True)
        np.testing.assert_allclose(each[k], one[0], atol=1e-5)
    assert (
        np.abs(each[1] - render_volume(model, volume, codes[0], 2, "cpu", back=True)[1]).max() > 0
    )
    with pytest.raises(UdasegError, match="domain"):
        model.encode_style(torch.zeros(1, 1, 16, 16), domain="mr")


# --- command line --------------------------------------------------------------------------------


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result


def test_cli_help_of_the_translation_commands():
    assert "--sample-every" in invoke("translate", "train", "--help").output
    assert "--style-run" in invoke("translate", "apply", "--help").output
    assert "--pick" in invoke("cluster-styles", "--help").output
    text = invoke("translate", "--help").output
    assert "cluster-styles" in text and "apply" in text and "--translator" in text


def test_cli_json_runs_train_then_cluster_and_apply_in_one_go(ws):
    common = ["--work", str(ws.work), "--json", "--device", "cpu"]
    trained = invoke(
        "translate", "train", "--method", "test-styled.v0", "--source", str(ws.source),
        "--target", str(ws.target), "--set", "steps=2", "--set", "batch_size=1", "--set",
        "patch_size=32,32", "--sample-every", "0", "--name", "cli", "--set", "style_dim=3",
        "--set", "schedule=linear", *common,
    )  # fmt: skip
    summary = json.loads(trained.stdout)
    assert summary["steps"] == 2 and summary["samples"] == 1
    run = Path(summary["output"])
    config = json.loads((run / "manifest.json").read_text())["config"]
    assert config["hparams"]["schedule"] == "linear"
    assert json.loads((run / "model.json").read_text())["kwargs"]["style_dim"] == 3
    both = invoke("translate", "--translator", str(run), "--styles", "2", "--embedding", "pca",
                  *common)  # fmt: skip
    result = json.loads(both.stdout)
    assert result["cluster-styles"]["styles"] == 2 and result["translate-apply"]["copies"] == 8
    assert Path(result["translate-apply"]["output"]).name == "cli__k2"


# --- every registered method, briefly ------------------------------------------------------------


@pytest.mark.parametrize("method", real_methods())
def test_every_registered_translator_runs_through_the_stages(ws, method):
    spec = translator_spec(method)
    config = train_config(
        (ws.source, ws.target),
        method=method,
        name=f"smoke-{method}",
        hparams={**spec.tiny, "steps": 2, "batch_size": 1, "patch_size": [32, 32]},
        sample_every=0,
    )
    run = Path(train_stage.run(config, ws.work).summary["output"])
    assert (run / "samples" / "step_000002.png").is_file()
    style_run = None
    if spec.has_style_codes:
        clustered = cluster_styles.run(
            cluster_styles.ClusterStylesConfig(
                translator=run, styles=2, embedding="pca", device="cpu"
            ),
            ws.work,
        )
        style_run = Path(clustered.summary["output"])
    applied = translate_apply.run(
        translate_apply.TranslateApplyConfig(translator=run, style_run=style_run, device="cpu"),
        ws.work,
    )
    store = Store(Path(applied.summary["output"]) / "store.h5")
    source = Store(ws.source / "store.h5")
    assert len(store) == len(source) * (2 if spec.has_style_codes else 1)
    image = store.image(store.case_ids[0])
    assert np.isfinite(image).all() and image.shape == source.image(source.case_ids[0]).shape
