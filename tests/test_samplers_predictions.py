"""One DDIM/DDPM for every network: noise-, x0- and velocity-predicting (issue 34, point 4).

- ``predict_x0_eps`` inverts each prediction exactly, on the DDPM chain and on the flow path;
- ``ddim_step`` on a path given as (a, s) pairs is Eq. 12 on that path, and on the flow path it is Euler's step;
- the flow model's Euler sampler is the one DDIM: equal (to 1e-5) to a few-line Euler written here, on the
  shipped flow model, from the same start noise; Heun likewise;
- the unCLIP prior's sampler is the one DDIM with prediction "x0": equal to the loop it replaced, written here;
- the shipped models keep their numbers: per-image sums recorded with the samplers before the merge
  (main at e47df83; seed 0, 5 steps, 4 images, w = 2);
- the prediction is read from the model, and a model sampled on the wrong path is a one-line error.
"""
import pytest
import torch
import torch.nn.functional as F

from course_lib import store
from course_lib.diffusion import flow
from course_lib.diffusion import samplers as S
from course_lib.diffusion.flow import FLOW, TIME_SCALE
from course_lib.diffusion.forward import predict_eps_from_x0
from course_lib.diffusion.guidance import Guided, guided
from course_lib.diffusion.schedules import make_schedule
from course_lib.networks.prior import DiffusionPrior, PriorConfig
from course_lib.networks.unet import load_unet
from course_lib.pipelines.unclip import prior_sample

torch.set_num_threads(1)
LABELS = torch.tensor([1, 3, 7, 9])


def seed(s=0):
    return torch.Generator().manual_seed(s)


# --------------------------------------------------------------------------- the conversion
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_predict_x0_eps_inverts_each_prediction_on_the_ddpm_chain(prediction):
    s = make_schedule("cosine", 1000)
    x0, eps = torch.randn(3, 1, 4, 4, generator=seed(1)), torch.randn(3, 1, 4, 4, generator=seed(2))
    t = torch.tensor([10, 500, 900])
    a, sig = s.sqrt_alpha_bar[t].view(-1, 1, 1, 1), s.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
    x_t = a * x0 + sig * eps
    out = {"eps": eps, "x0": x0}[prediction]
    x0_hat, eps_hat = S.predict_x0_eps(out, x_t, a, sig, prediction)
    torch.testing.assert_close(x0_hat, x0, atol=1e-3, rtol=0)       # eps -> x0 divides by sqrt(alpha_bar) ~ 0.1
    torch.testing.assert_close(eps_hat, eps, atol=1e-3, rtol=0)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_predict_x0_eps_inverts_each_prediction_on_the_flow_path(prediction):
    x0, eps = torch.randn(3, 2, generator=seed(1)), torch.randn(3, 2, generator=seed(2))
    for t in (0.2, 0.5, 0.9):
        x_t = flow.flow_path(x0, eps, t)
        out = {"v": flow.velocity_target(x0, eps), "x0": x0}[prediction]
        x0_hat, eps_hat = S.predict_x0_eps(out, x_t, *FLOW.scales(t), prediction)
        torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
        torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=0)


def test_ddim_step_on_pairs_is_eq12_on_that_path_and_euler_on_the_flow_path():
    x0, eps, z = (torch.randn(2, 1, 4, 4, generator=seed(k)) for k in range(3))
    ab = make_schedule("cosine", 1000).alpha_bar
    pair = lambda a: (a.sqrt(), (1 - a).sqrt())
    for eta in (0.0, 1.0):                            # the DDPM chain written as pairs: the same step
        torch.testing.assert_close(S.ddim_step(x0, eps, pair(ab[600]), pair(ab[300]), eta=eta, noise=z),
                                   S.ddim_step(x0, eps, ab[600], ab[300], eta=eta, noise=z), atol=1e-6, rtol=0)
    t, s = 0.7, 0.4                                   # the flow path: (1 - s) x0 + s eps, i.e. x_t + (s - t) v
    x_t, v = flow.flow_path(x0, eps, t), flow.velocity_target(x0, eps)
    step = S.ddim_step(x0, eps, FLOW.scales(t), FLOW.scales(s))
    torch.testing.assert_close(step, flow.flow_path(x0, eps, s), atol=1e-6, rtol=0)
    torch.testing.assert_close(step, x_t + (s - t) * v, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="pair"):
        S.ddim_step(x0, eps, (0.5, 0.5, 0.5), ab[0])


# --------------------------------------------------------------------------- the shipped flow model
@pytest.fixture(scope="module")
def flow_model():
    return load_unet("data/weights/flow")[0]


def _euler_by_hand(model, x, steps, cond):
    """Euler's method as lesson 12 writes it: x <- x + (t_next - t) v(x, t)."""
    times = [1 - i / steps for i in range(steps + 1)]
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * model(x, torch.full((len(x),), t * TIME_SCALE), cond).float()
    return x


def _heun_by_hand(model, x, steps, cond):
    """Karras et al. 2022, Algorithm 1 on dx/dt = v (Euler on the last step to t = 0)."""
    v_at = lambda x, t: model(x, torch.full((len(x),), t * TIME_SCALE), cond).float()
    times = [1 - i / steps for i in range(steps + 1)]
    for t, t_next in zip(times[:-1], times[1:]):
        v = v_at(x, t)
        x_euler = x + (t_next - t) * v
        x = x_euler if t_next == 0 else x + (t_next - t) * 0.5 * (v + v_at(x_euler, t_next))
    return x


@torch.no_grad()
def test_flow_euler_is_the_one_ddim_on_the_shipped_flow_model(flow_model):
    net = guided(flow_model, 2.0)
    x_1 = torch.randn(4, 1, 28, 28, generator=seed(0))
    by_hand = _euler_by_hand(net, x_1, 5, LABELS)
    one_ddim = S.ddim_sample(net, x_1, FLOW, steps=5, cond=LABELS, clip_x0=False)      # prediction read: "v"
    torch.testing.assert_close(one_ddim, by_hand, atol=1e-5, rtol=0)
    assert torch.equal(flow.euler_sample(net, x_1, steps=5, cond=LABELS), one_ddim)
    torch.testing.assert_close(flow.heun_sample(net, x_1, steps=5, cond=LABELS), _heun_by_hand(net, x_1, 5, LABELS),
                               atol=1e-5, rtol=0)
    # the one sample(): flow.sample is samplers.sample on FLOW, Euler by default, not clipped
    assert torch.equal(flow.sample(net, 4, steps=5, cond=LABELS, generator=seed(0)),
                       S.sample(net, 4, FLOW, sampler="euler", steps=5, cond=LABELS, generator=seed(0)))


@torch.no_grad()
def test_the_flow_callback_keeps_its_contract(flow_model):
    seen = []
    x = S.ddim_sample(flow_model, torch.randn(2, 1, 28, 28, generator=seed(0)), FLOW, steps=3,
                      cond=torch.tensor([1, 2]), callback=seen.append, clip_x0=False)
    assert [d["i"] for d in seen] == [0, 1, 2] and [d["t"] for d in seen] == [1.0, 1 - 1 / 3, 1 - 2 / 3]
    assert set(seen[0]) == {"i", "t", "x_t", "x0_hat", "v"}
    assert torch.equal(x, seen[-1]["x0_hat"])          # the last step lands on its own x0_hat at t = 0


# --------------------------------------------------------------------------- the unCLIP prior
@pytest.fixture(scope="module")
def prior():
    folder = "data/weights/unclip"
    net = DiffusionPrior(PriorConfig.from_dict(store.read_json(f"{folder}/prior/config.json")))
    store.load_weights(net, f"{folder}/prior")
    cfg = store.read_json(f"{folder}/config.json")["prior"]
    return net.eval(), make_schedule(cfg["schedule"], cfg["T"])


@torch.no_grad()
def _prior_by_hand(model, cond, schedule, steps, w, z):
    """The prior's private DDIM before it folded into ddim_sample: x0-prediction, implied noise, Eq. 12."""
    net = Guided(model, w, null_cond=torch.zeros_like)
    ts = S.timesteps(schedule.T, steps).tolist()
    for i, t in enumerate(ts):
        t_b = torch.full((len(z),), t)
        z0_hat = net(z, t_b, cond).float()
        eps_hat = predict_eps_from_x0(z, t_b, z0_hat, schedule)
        ab, ab_prev = schedule.alpha_bar[t], torch.tensor(1.0) if i == len(ts) - 1 else schedule.alpha_bar[ts[i + 1]]
        z = ab_prev.sqrt() * z0_hat + (1 - ab_prev).sqrt() * eps_hat
    return F.normalize(z, dim=-1)


@pytest.mark.parametrize("steps", [5, None])
def test_the_prior_samples_with_the_one_ddim(prior, steps):
    model, schedule = prior
    cond = F.normalize(torch.randn(3, model.config.embed_dim, generator=seed(3)), dim=-1)
    z_T = torch.randn(3, model.config.embed_dim, generator=seed(4))
    seen = []
    z = prior_sample(model, cond, schedule, steps=steps, guidance=2.0, z_T=z_T, callback=seen.append)
    torch.testing.assert_close(z, _prior_by_hand(model, cond, schedule, steps or schedule.T, 2.0, z_T),
                               atol=1e-6, rtol=0)
    assert len(seen) == (steps or schedule.T) and set(seen[0]) == {"i", "t", "x_t", "x0_hat"}
    assert S.prediction_of(Guided(model, 2.0), schedule) == "x0"            # the prior says what it predicts


# --------------------------------------------------------------------------- the shipped models keep their numbers
# per-image sums of the samples, recorded with main's samplers (e47df83) on a CPU, fp32
BEFORE = {
    "class ddim": [-508.9908, -330.3422, -597.7735, -504.5253],
    "class ddim eta 1": [-612.8866, -458.2809, -622.5228, -526.293],
    "class ddpm": [-612.8913, -458.2855, -622.5214, -526.2872],
    "flow euler": [-640.5134, -515.1346, -608.1844, -569.8353],
    "flow heun": [-637.6733, -514.0681, -600.6031, -565.1155],
    "latent ddim": [80.0186, 42.0139, 73.7279, 68.1603],
    "unclip prior": [0.055, 0.7043, 2.3147, 0.2324],
}


@torch.no_grad()
def test_the_shipped_models_keep_their_numbers(flow_model, prior):
    from course_lib.pipelines.latent import load_latent
    model, cfg = load_unet("data/weights/class")
    schedule = make_schedule(cfg["schedule"], cfg["T"])
    run = dict(steps=5, cond=LABELS)
    after = {
        "class ddim": S.sample(guided(model, 2.0), 4, schedule, generator=seed(), **run),
        "class ddim eta 1": S.sample(guided(model, 2.0), 4, schedule, eta=1.0, generator=seed(), **run),
        "class ddpm": S.sample(guided(model, 2.0), 4, schedule, sampler="ddpm", generator=seed(), **run),
        "flow euler": flow.sample(guided(flow_model, 2.0), 4, generator=seed(), **run),
        "flow heun": flow.sample(guided(flow_model, 2.0), 4, sampler="heun", generator=seed(), **run),
        "latent ddim": S.sample(guided(load_latent("data/weights/latent").unet, 2.0), 4, make_schedule("cosine", 1000),
                                generator=seed(), shape=(4, 7, 7), clip_x0=3.0, **run),
    }
    net, prior_schedule = prior
    text = F.normalize(torch.randn(4, 64, generator=seed()), dim=-1)
    after["unclip prior"] = prior_sample(net, text, prior_schedule, steps=5, guidance=2.0, generator=seed())
    for name, x in after.items():
        sums = x.flatten(1).sum(1)
        torch.testing.assert_close(sums, torch.tensor(BEFORE[name]), atol=2e-3, rtol=0, msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------- what the network predicts
def test_the_prediction_is_read_from_the_model_and_the_wrong_path_is_refused(flow_model):
    class_model, _ = load_unet("data/weights/class")
    ddpm = make_schedule("cosine", 1000)
    assert S.prediction_of(guided(flow_model, 2.0), FLOW) == "v"
    assert S.prediction_of(S.batched(guided(class_model, 2.0)), ddpm) == "eps"
    assert S.prediction_of(lambda x, t, c=None: x, ddpm) == "eps"            # unknown: the path's own
    assert S.prediction_of(lambda x, t, c=None: x, FLOW) == "v"
    assert S.prediction_of(class_model, ddpm, "x0") == "x0"
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="flow-matching model"):
        S.ddim_sample(flow_model, x, ddpm, steps=2)
    with pytest.raises(ValueError, match="predicts the noise"):
        S.ddim_sample(class_model, x, FLOW, steps=2)
    with pytest.raises(ValueError, match="prediction must be one of"):
        S.ddim_sample(class_model, x, ddpm, steps=2, prediction="score")
    with pytest.raises(ValueError, match="flow path"):
        S.ddpm_sample(flow_model, x, FLOW, steps=2)
    with pytest.raises(ValueError, match="schedule must be"):
        S.ddim_sample(class_model, x, "cosine", steps=2)
    with pytest.raises(ValueError, match="unknown flow sampler"):
        S.sample(flow_model, 2, FLOW, sampler="ddpm", steps=2)
    with pytest.raises(ValueError, match="eta"):
        S.sample(flow_model, 2, FLOW, sampler="euler", steps=2, eta=0.5)
    with pytest.raises(ValueError, match="steps"):
        S.sample(flow_model, 2, FLOW, sampler="euler", steps=0)
