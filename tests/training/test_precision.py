"""``--amp`` and ``--threads``: bf16 autocast wherever the device computes bf16 natively (CUDA, a
CPU with AVX512-BF16 / AMX), float32 with a notice elsewhere, recorded in the config hash; losses,
statistics and weights in float32; torch's thread count set at a stage's start.

Either CPU is simulated with ``UDASEG_CPU_BF16`` (1: native bf16, 0: none), so the tests mean the
same on every machine; CPU autocast works (slowly) even where bf16 is emulated.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from tests.stages.test_segment_train import config, same_weights, weights
from udaseg import device as devices
from udaseg.config import is_result
from udaseg.errors import UdasegError
from udaseg.stages import STAGES, preprocess, segment_train

COMPUTING = (
    "segment-train",
    "adapt",
    "translate train",
    "translate apply",
    "cluster-styles",
    "pseudo-label",
    "predict",
)


@pytest.fixture(scope="module")
def source_store(tmp_path_factory):
    from tests.conftest import write_tiny_dataset

    root = tmp_path_factory.mktemp("precision")
    manifest = write_tiny_dataset(root / "raw")
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=root / "raw"), root / "w")
    return root / "w" / "preprocessed" / "tiny__src"


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "0")


@pytest.fixture
def restore_threads(monkeypatch):
    threads = torch.get_num_threads()
    # the default a stage records in the test is undone with it
    monkeypatch.setattr(devices, "_PROCESS_THREADS", devices._PROCESS_THREADS)
    yield
    torch.set_num_threads(threads)


def train(store, work, name, **options):
    """A 3-step tiny U-Net run (validation only at the end)."""
    hparams = {"steps": 3, "batch_size": 2, "patch_size": [32, 32], "lr": 1e-3}
    run = config(store, name=name, hparams=hparams, val_every=0, checkpoint_every=3, **options)
    return segment_train.run(run, work)


# --- the decision ----------------------------------------------------------------------------


def test_precision_follows_the_device_and_the_cpu_flags(monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    assert devices.resolve_precision("cpu", True) == "bf16"
    assert devices.resolve_precision("cpu", False) == "float32"
    monkeypatch.setenv(devices.CPU_BF16_ENV, "0")
    assert devices.resolve_precision("cuda:1", True, notice=False) == "bf16"
    with pytest.warns(UserWarning, match="no native bfloat16"):
        assert devices.resolve_precision("cpu", True) == "float32"
    monkeypatch.setenv(devices.CPU_BF16_ENV, "yes")
    with pytest.raises(UdasegError, match="UDASEG_CPU_BF16") as caught:
        devices.cpu_has_native_bf16()
    assert caught.value.exit_code == 2


def test_the_cpu_check_reads_the_bf16_flags_of_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.delenv(devices.CPU_BF16_ENV, raising=False)
    cases = (("fpu avx512f avx512_bf16", True), ("fpu amx_bf16", True), ("fpu avx2", False))
    for flags, native in cases:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(devices, "CPUINFO", cpuinfo)
        devices._cpu_flags.cache_clear()
        assert devices.cpu_has_native_bf16() is native
    devices._cpu_flags.cache_clear()


# --- segment-train on a CPU with and without native bf16 -------------------------------------


def test_cpu_bf16_changes_the_hash_and_the_weights_and_repeats_bit_for_bit(
    native_bf16, source_store, tmp_path
):
    work = tmp_path / "w"
    fp32 = train(source_store, work, "fp32", amp=False)
    bf16 = train(source_store, work, "bf16", amp=True)
    again = train(source_store, work, "again", amp=True)
    assert fp32.config["precision"] == "float32" and bf16.config["precision"] == "bf16"
    assert fp32.config_hash != bf16.config_hash
    runs = work / "segment"
    assert not same_weights(weights(runs / "fp32"), weights(runs / "bf16"))
    assert same_weights(weights(runs / "bf16"), weights(runs / "again"))
    assert bf16.summary["last_validation"] == again.summary["last_validation"]


def test_checkpoints_of_a_bf16_run_hold_float32_weights_statistics_and_optimiser_state(
    native_bf16, source_store, tmp_path
):
    from udaseg.training.checkpoint import load_checkpoint

    train(source_store, tmp_path / "w", "bf16", amp=True)
    saved = load_checkpoint(tmp_path / "w" / "segment" / "bf16" / "checkpoint_final.pt")
    tensors = dict(saved["state_dict"])
    assert any("running_mean" in k for k in tensors)  # the U-Net's batch norms
    for state in saved["training"]["optimizers"]["model"]["state"].values():
        tensors.update({f"adam.{k}": v for k, v in state.items() if k != "step"})
    floating = {k: v.dtype for k, v in tensors.items() if v.is_floating_point()}
    assert floating and set(floating.values()) == {torch.float32}


def test_without_native_bf16_amp_falls_back_to_float32_with_a_notice(
    no_native_bf16, source_store, tmp_path
):
    work = tmp_path / "w"
    with pytest.warns(UserWarning, match="computes in float32"):
        asked = train(source_store, work, "run", amp=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # --no-amp asks for nothing it cannot have
        off = train(source_store, work, "run", amp=False)
    assert asked.config["precision"] == off.config["precision"] == "float32"
    assert asked.config_hash == off.config_hash and off.summary["skipped"] is True


# --- float32 where it matters ----------------------------------------------------------------


class _ScalarBf16(torch.overrides.TorchFunctionMode):
    """Records every op that returns a bf16 scalar: a loss reduced in bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dim() == 0 and out.dtype == torch.bfloat16:
            self.ops.append(getattr(func, "__name__", str(func)))
        return out


def test_a_bf16_segmentation_step_computes_its_loss_in_float32(native_bf16):
    from udaseg.losses import create_loss
    from udaseg.models.registry import create_model, model_spec
    from udaseg.training import loop

    runtime = loop.Runtime(device="cpu", amp=True)
    torch.manual_seed(0)
    model = create_model("unet2d.v1", in_channels=1, num_classes=3, **model_spec("unet2d.v1").tiny)
    model = loop.prepare_model(model, runtime, 2)
    criterion = create_loss("ce_dice", 3)
    images = torch.rand(2, 1, 32, 32).to(memory_format=loop.memory_format(runtime, 2))
    labels = torch.randint(0, 3, (2, 32, 32))
    with _ScalarBf16() as mode:
        with loop.autocast(runtime):
            outputs = model(images)
        total, _ = criterion(outputs, labels)
        total.backward()
    assert outputs["logits"].dtype == torch.bfloat16  # autocast did take effect
    assert total.dtype == torch.float32 and mode.ops == []
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["cyclegan.v1", "disentangled.v1", "domain-style.v1"])
def test_translator_losses_stay_float32_under_bf16(name):
    from udaseg.translation.registry import create_translator, translator_spec

    torch.manual_seed(0)
    translator = create_translator(name, **translator_spec(name).tiny)
    optimizers = translator.optimizers(translator_spec(name).hparams)
    generator = torch.Generator().manual_seed(1)
    source, target = (torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1 for _ in range(2))
    backward_dtypes = set()
    real_backward = torch.Tensor.backward

    def backward(tensor, *args, **kwargs):
        backward_dtypes.add(tensor.dtype)
        return real_backward(tensor, *args, **kwargs)

    with _ScalarBf16() as mode, _patched(torch.Tensor, "backward", backward):
        translator.train_step(
            source, target, optimizers, lambda: devices.autocast("cpu", devices.BF16)
        )
    assert mode.ops == [] and backward_dtypes == {torch.float32}


@contextlib.contextmanager
def _patched(owner, name, value):
    real = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, real)


def test_bf16_inference_returns_float32_probabilities_that_differ_from_float32(native_bf16):
    from udaseg.inference import predict_volume
    from udaseg.models.registry import create_model, model_spec

    torch.manual_seed(0)
    model = create_model("unet2d.v1", in_channels=1, num_classes=3, **model_spec("unet2d.v1").tiny)
    volume = torch.rand(2, 32, 32).numpy()
    fp32 = predict_volume(model.eval(), volume, dims=2, amp=False)
    bf16 = predict_volume(model, volume, dims=2, amp=True)
    assert fp32.dtype == bf16.dtype == "float32" and not (fp32 == bf16).all()
    assert abs(bf16.sum(0) - 1).max() < 1e-5  # a softmax in float32


# --- threads ---------------------------------------------------------------------------------


def test_every_computing_stage_has_a_runtime_threads_option():
    for command in COMPUTING:
        cls = STAGES[command].config_class
        assert not is_result(cls, "threads"), command


def test_threads_sets_torch_threads_at_the_stage_start(
    native_bf16, source_store, tmp_path, restore_threads
):
    torch.set_num_threads(2)
    with pytest.raises(UdasegError):  # refused after the threads were set: nothing trained
        segment_train.run(
            config(source_store, threads=1, hparams={"patch_size": [32]}), tmp_path / "w"
        )
    assert torch.get_num_threads() == 1


def test_threads_default_to_slurm_cpus_per_task(monkeypatch, restore_threads):
    torch.set_num_threads(2)
    devices._PROCESS_THREADS = None  # as in a fresh process (restore_threads puts it back)
    monkeypatch.delenv(devices.SLURM_CPUS_ENV, raising=False)
    assert devices.apply_threads(None) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv(devices.SLURM_CPUS_ENV, "1")
    assert devices.apply_threads(None) == 1 and torch.get_num_threads() == 1
    assert devices.apply_threads(2) == 2 and torch.get_num_threads() == 2


def test_a_stages_threads_do_not_carry_over_to_the_next_stage(monkeypatch, restore_threads):
    torch.set_num_threads(2)
    devices._PROCESS_THREADS = None
    monkeypatch.delenv(devices.SLURM_CPUS_ENV, raising=False)
    assert devices.apply_threads(1) == 1 and torch.get_num_threads() == 1  # e.g. --threads 1
    # the next stage of the same pipeline run, without --threads: the process's default again
    assert devices.apply_threads(None) == 2 and torch.get_num_threads() == 2


def test_threads_is_on_the_command_line(restore_threads):
    from typer.testing import CliRunner

    from udaseg.cli import app

    done = CliRunner().invoke(app, ["segment-train", "--help"], terminal_width=200)
    assert done.exit_code == 0 and "--threads" in done.output


def test_instance_norm_modules_stay_contiguous_on_the_cpu_only():
    from udaseg.training import loop

    cpu = loop.Runtime(device="cpu", channels_last=True)
    assert loop.memory_format(cpu, 2) == torch.channels_last
    assert loop.memory_format(cpu, 3) == torch.channels_last_3d
    assert loop.memory_format(cpu, 2, instance_norm=True) == torch.contiguous_format
    off = loop.Runtime(device="cpu", channels_last=False)
    assert loop.memory_format(off, 2) == torch.contiguous_format


def test_bigl_translates_under_the_runs_precision(native_bf16):
    from udaseg.adaptation import bigl
    from udaseg.adaptation.base import AdaptBatch
    from udaseg.translation.registry import create_translator, translator_spec

    translator = create_translator("cyclegan.v1", **translator_spec("cyclegan.v1").tiny).eval()
    seen = []
    hook = translator.G_st.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    batch = AdaptBatch(source=images, labels=None, target=images)
    out = bigl.translate_both(translator, batch, lambda: devices.autocast("cpu", devices.BF16))
    hook.remove()
    assert seen == [torch.bfloat16]
    assert all(v.dtype == torch.float32 for v in out.values())
