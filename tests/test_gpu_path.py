"""The instructor's GPU path, checked on the CPU (issue 25): under the gpu profile a lesson uses a finished
model instead of training one, lesson 08 trains text-to-image once, ``samplers.sample`` runs the network in
bounded batches under autocast without changing what a seed gives, and a training step has no per-step
host transfer (on the CPU: the EMA counter and the generators; on CUDA: counted with the sync debug mode)."""
import dataclasses
import warnings

import pytest
import torch

from course_lib import registry
from course_lib.config import PROFILES, _runtime, cpu_runtime, get_runtime
from course_lib.diffusion import samplers
from course_lib.diffusion.guidance import guided
from course_lib.diffusion.schedules import make_schedule
from course_lib.networks.unet import UNet, UNetConfig
from course_lib.training import clip as clip_training
from course_lib.training import text2image
from course_lib.training.loop import EMA, ema_multi_avg_fn, fit
from course_lib.training.clip import recipe_config as clip_recipe
from course_lib.training.denoiser import recipe_config as denoiser_recipe
from course_lib.training.toy import recipe_config as toy_recipe

GPU = PROFILES["gpu"]
CPU_RT = get_runtime("cpu", precision="fp32")


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """No user checkpoints: what a fresh Colab runtime has."""
    monkeypatch.setenv("COURSE_HOME", str(tmp_path))
    return tmp_path


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was trained")
    for name, spec in list(registry.MODELS.items()):
        monkeypatch.setitem(registry.MODELS, name, dataclasses.replace(spec, train=refuse))
    monkeypatch.setattr(clip_training, "train_clip", refuse)


# --------------------------------------------------------------------------- 1. nothing retrained per lesson
@pytest.mark.parametrize("name", list(registry.MODELS))
def test_under_gpu_a_lesson_finds_the_cpu_profiles_model_instead_of_training(name, empty_home, monkeypatch, capsys):
    assert registry.find_matching(name, GPU) is None                     # no gpu weights are shipped
    folder, used = registry.find_usable(name, GPU)
    assert used.name == "cpu" and folder.name == name
    _no_training(monkeypatch)
    model = registry.get_model(name, GPU, CPU_RT)                         # would raise if it trained
    assert model is not None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "cpu-profile" in out and "--profile gpu" in out   # the one-line note


def test_under_gpu_the_guide_and_clip_come_from_the_fallback_too(empty_home, monkeypatch):
    _no_training(monkeypatch)
    assert isinstance(registry.get_guide(GPU, CPU_RT), UNet)
    model, _, record = clip_training.get_clip(GPU, CPU_RT)
    assert record["config"]["dim"] == clip_recipe(PROFILES["cpu"]).dim


def test_a_users_own_gpu_model_comes_before_the_fallback(empty_home):
    tiny = (GPU.replace(n_train=300, batch_size=16, warmup_steps=1)
            .with_recipe("denoiser", channels=(8, 16), attention=False, time_dim=16, blocks=1)
            .with_recipe("classifier", steps=2))
    assert registry.find_usable("classifier", tiny)[1].name == "cpu"
    registry.train_missing("classifier", tiny, CPU_RT, progress=False)  # `python -m course_lib train ...`
    folder, used = registry.find_usable("classifier", tiny)
    assert used is tiny and folder == empty_home / "classifier"


def test_no_fallback_outside_the_gpu_profile(empty_home):
    odd = PROFILES["cpu"].with_recipe("classifier", steps=7)
    assert registry.find_usable("classifier", odd) is None                # cpu has no fallback: it trains


# --------------------------------------------------------------------------- 2. lesson 08 trains once
@pytest.mark.parametrize("own_clip", [False, True])
def test_lesson_08_trains_text_to_image_at_most_once_under_gpu(own_clip, empty_home, monkeypatch):
    prof = (GPU.replace(n_train=300, batch_size=8, warmup_steps=1, lesson_train_steps=2, checkpoint_every=0)
            .with_recipe("text2image", steps=2).with_recipe("clip", steps=2, batch=16))
    if own_clip:                                                        # the profile's own (gpu-size) CLIP
        clip_training.train_clip(prof, runtime=CPU_RT, progress=False)
    clip = clip_training.get_clip(prof, CPU_RT, progress=False)        # what the lesson loads first
    assert (clip[2]["config"]["dim"] == clip_recipe(prof).dim) is own_clip
    calls = []
    real = text2image.train_text2image
    monkeypatch.setattr(text2image, "train_text2image",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    _, demo_dir = text2image.train_demo(prof, clip, CPU_RT, progress=False)
    pipe = registry.get_model("text2image", prof, CPU_RT, progress=False)
    assert len(calls) == 1                                               # the demo, nothing after it
    assert (demo_dir.name == "text2image") is own_clip                   # the demo was the full run
    assert pipe.unet.config.context_dim == pipe.text_encoder.width


def test_gpu_lesson_demos_of_lessons_03_and_05_are_their_full_runs_and_lesson_02_has_its_own_setting():
    # lessons 03 and 05 train into the default checkpoint when the demo is as long as the full run
    assert GPU.lesson_train_steps >= denoiser_recipe(GPU).steps
    assert GPU.lesson_train_steps >= denoiser_recipe(GPU).class_steps
    assert toy_recipe(GPU).tiny_steps < GPU.lesson_train_steps // 10          # lesson 02: "a very short run"


# --------------------------------------------------------------------------- 3. bounded batches, autocast
def _unet(num_classes: int = 0) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(channels=(8, 16), attention=False, time_dim=16, num_classes=num_classes)).eval()


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.sizes, self.autocast = model, [], []

    def forward(self, x, t, cond=None):
        self.sizes.append(x.shape[0])
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.model(x, t, cond)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_splits_a_large_n_and_the_seed_gives_the_same_samples_for_any_batch_size(sampler):
    schedule = make_schedule("cosine", 50)
    net = Counting(_unet(num_classes=10))
    labels = torch.arange(23) % 10
    run = dict(sampler=sampler, steps=4, cond=labels, eta=None)
    whole = samplers.sample(guided(net, 2.0), 23, schedule, generator=torch.Generator().manual_seed(1), **run)
    assert max(net.sizes) == 2 * 23                                      # default batch: one call (guided: x2)
    net.sizes.clear()
    parts = samplers.sample(guided(net, 2.0), 23, schedule, generator=torch.Generator().manual_seed(1),
                            batch_size=5, **run)
    assert max(net.sizes) == 2 * 5 and len(net.sizes) == 4 * 5          # 5 calls of <= 5 images per step
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=0)         # same x_T, same per-step noise


def test_sample_runs_the_network_under_autocast_and_agrees_with_fp32(monkeypatch):
    schedule = make_schedule("cosine", 50)
    net = Counting(_unet())
    fp32 = samplers.sample(net, 16, schedule, steps=5, generator=torch.Generator().manual_seed(0))
    assert not any(net.autocast)                                         # on a CPU: fp32, whatever the CPU
    monkeypatch.setattr(samplers, "inference_autocast",                  # what a T4 gets (fp16 there)
                        lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    low = samplers.sample(net, 16, schedule, steps=5, generator=torch.Generator().manual_seed(0), batch_size=8)
    assert net.autocast[-1] and low.dtype == torch.float32
    assert (low - fp32).abs().mean() < 0.02 and (low - fp32).abs().max() < 0.25


def test_sample_refuses_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        samplers.sample(_unet(), 4, make_schedule("cosine", 50), steps=2, batch_size=0)


# --------------------------------------------------------------------------- 4. no host sync every step
def test_ema_counts_in_python_and_gives_averagedmodels_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))   # a float and an int buffer
    ref = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(0.9), use_buffers=True)
    ema = EMA(net, 0.9)
    ema.n_averaged = torch.tensor(0, device="meta")      # a counter that cannot be read: EMA never reads it
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(8, 3))                                           # moves the BatchNorm buffers
        ref.update_parameters(net)
        ema.update_parameters(net)
    assert ema.updates == 5
    for a, b in zip(ref.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(Exception):                                        # torch's class does read it
        bad = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(0.9), use_buffers=True)
        bad.n_averaged = torch.tensor(0, device="meta")
        bad.update_parameters(net)


def test_ema_resumes_its_count_from_a_state_dict():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, 0.99)
    for _ in range(3):
        ema.update_parameters(net)
    again = EMA(net, 0.99)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3 and again.n_averaged.device.type == "cpu"


def test_fit_keeps_one_generator_when_noise_and_batches_share_a_device():
    seen = {}

    def get_batch(g):
        seen.setdefault("batch", g)
        return torch.randn(4, 2, generator=g)

    def loss_fn(m, batch, g):
        seen.setdefault("loss", g)
        return m(batch).pow(2).mean()

    common = dict(steps=2, lr=1e-2, warmup_steps=1, batch_size=4, ema_decay=0.9, config={}, runtime=CPU_RT)
    fit(torch.nn.Linear(2, 1), loss_fn, get_batch, rng_device="cpu", **common)
    assert seen["batch"] is seen["loss"]                                 # one device: one generator, as before
    seen.clear()
    fit(torch.nn.Linear(2, 1), loss_fn, get_batch, rng_device="cpu", batch_rng_device="cpu", **common)
    assert seen["batch"] is seen["loss"]
    # (a batch generator on another device than the noise's needs CUDA: test_on_cuda_a_training_step_...)


def test_text_to_image_draws_noise_on_the_device_and_captions_on_the_host(monkeypatch, empty_home):
    captured = {}
    monkeypatch.setattr(text2image, "fit", lambda *a, **k: captured.update(k) or None)
    prof = PROFILES["test"].replace(n_train=200)
    text2image.train_text2image(prof, out=empty_home / "t2i", runtime=CPU_RT, progress=False)
    assert captured["rng_device"] == CPU_RT.device and torch.device(captured["batch_rng_device"]).type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: counts synchronisations")
@pytest.mark.parametrize("train", ["class", "text2image"])
def test_on_cuda_a_training_step_makes_no_sync(train, empty_home):
    rt = get_runtime("cuda")
    prof = PROFILES["test"].replace(n_train=500)
    fn = registry.MODELS[train].train

    def syncs(steps):
        fn(prof, empty_home / f"{train}-{steps}", rt, steps, False)    # warm-up and data caches
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn(prof, empty_home / f"{train}-{steps}-again", rt, steps, False)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)
    assert syncs(13) == syncs(3)                                          # ten more steps, no more syncs


# --------------------------------------------------------------------------- 5. precision defaults
def test_precision_defaults_are_the_measured_ones(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "a GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert _runtime(cuda, False, None).precision == "fp32"             # bf16 measured 0.77x on an H100
    assert _runtime(cuda, True, None).precision == "bf16"              # compiled: only bf16 was measured
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    rt = _runtime(cuda, False, None)
    assert rt.precision == "fp16" and rt.use_grad_scaler              # a T4
    with pytest.warns(UserWarning, match="emulated"):
        assert _runtime(cuda, False, "bf16").precision == "bf16"       # forced: allowed, with a warning
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _runtime(cuda, False, "bf16").precision == "bf16"       # real bf16 units: no warning


def test_fp16_for_the_gpu_leaves_the_cpu_toy_alone(monkeypatch, test_profile):
    from course_lib.training.toy import train_toy
    monkeypatch.setenv("COURSE_PRECISION", "fp16")
    assert cpu_runtime().device.type == "cpu" and cpu_runtime().precision in ("fp32", "bf16")
    model, _, res = train_toy(test_profile, steps=3, progress=False)
    assert res.step == 3
