"""One-off conversion (issue 34): give the shipped denoiser, class, flow and latent folders the "sampling" key
that training now writes into config.json, so every door (load_pipeline, the command line, make weights, the
lessons, the benchmarks) reads one set of defaults.

It writes only that key into each config.json (the other keys and their order are kept; the weights are never
touched). The values are what `python -m course_lib sample` used for these cpu-profile models before the key
existed, so their images do not change: the cpu profile's guidance (3.0 for the class and latent models, 1.5 on
the flow model's velocity, self-guidance 2.0 for the denoiser), ddim or euler, and the cpu profile's
sample_steps (25) or flow_steps (10); and for the class model, since issue 36, its measured guidance method
(guidance only in the interval t in [500, 999]). The one change: `sample` without --steps used all T = 1000 DDIM steps;
it now uses the folder's 25, which `make weights` and the lessons already used.
text2image, text2image-lm and unclip already have the key (written by their training) and are left alone.

    python data/weights/convert_sampling_defaults.py           # convert (again: a no-op)
    python data/weights/convert_sampling_defaults.py --check   # exit 1 if a folder still lacks the key
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SAMPLING = {
    "denoiser": {"sampler": "ddim", "steps": 25, "guidance": 2.0},
    # the class model's guidance method: issue 36's measured winner (bench/results/guidance_methods-cpu.json,
    # "defaults"): CFG only at t in [500, 999], so 38 network passes instead of 50 and a lower FID
    "class": {"sampler": "ddim", "steps": 25, "guidance": 3.0, "method": "interval", "interval": [500, 999]},
    "flow": {"sampler": "euler", "steps": 10, "guidance": 1.5},
    "latent": {"sampler": "ddim", "steps": 25, "guidance": 3.0},
}


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    missing = []
    for name, sampling in SAMPLING.items():
        path = here / name / "config.json"
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if cfg.get("sampling") == sampling:
            continue
        if "--check" in argv:
            missing.append(name)
            continue
        cfg["sampling"] = sampling
        path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        print(f"{path}: sampling = {sampling}")
    if missing:
        print(f"without the sampling key: {', '.join(missing)} (run python {Path(__file__).name})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
