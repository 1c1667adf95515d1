"""Run with main's code (e47df83): records the recipe configs and a tiny fit's result, for the tests."""
import json, sys, hashlib
from pathlib import Path
import torch
torch.set_num_threads(1)
from course_lib.config import PROFILES, get_runtime
from course_lib import registry
from course_lib.training.loop import fit

dst = Path(sys.argv[1]); dst.mkdir(parents=True, exist_ok=True)
out = {}
for pname in ("test", "cpu", "gpu"):
    prof = PROFILES[pname]
    out[pname] = {name: {"config": registry.REGISTRY[name][0](prof), "steps": registry._steps_for(name, prof)}
                  for name in registry.REGISTRY}
    out[pname]["_sampling"] = {k: getattr(prof, k) for k in ("sample_steps", "guidance", "flow_guidance",
                               "flow_steps", "self_guidance", "autoguidance")}
(dst / "recipes_before.json").write_text(json.dumps(out, indent=1, sort_keys=True))

def tiny(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    def get_batch(g):
        return torch.randn(8, 2, generator=g)
    def loss_fn(m, x, g):
        t = torch.randint(0, 10, (8,), generator=g)
        noise = torch.randn(x.shape, generator=g)
        per = (m(x + noise * (t[:, None] + 1) / 10) - noise).pow(2).mean(1)
        return per.mean(), {"t": t, "per_example": per}
    return model, loss_fn, get_batch

def run(out, stop_after=None):
    model, loss_fn, get_batch = tiny()
    return fit(model, loss_fn, get_batch, steps=8, lr=1e-2, warmup_steps=2, batch_size=8, ema_decay=0.9,
               config={"kind": "tiny-hooks", "width": 8}, meta={"kind": "tiny-hooks"}, out=out,
               checkpoint_every=3, runtime=get_runtime("cpu"), progress=False, T=10, guide_step=4,
               stop_after=stop_after)

def dump(res):
    return {"model": {k: v.flatten().tolist() for k, v in res.model.state_dict().items()},
            "ema": {k: v.flatten().tolist() for k, v in res.ema_model.state_dict().items()},
            "losses": res.losses, "loss_by_t": res.loss_by_t, "step": res.step}
full = run(dst / "fit_full")
part = run(dst / "fit_before_ckpt", stop_after=5)      # a checkpoint written by main's fit, resumed by the tests
(dst / "fit_before.json").write_text(json.dumps({"full": dump(full)}, indent=0))
print("ok", full.losses[-1])
