"""What every benchmark shares: the command line (--profile, --threads), the machine description, and
saving results as JSON under bench/results/<name>-<profile>.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(description: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--profile", choices=("test", "cpu", "gpu"), help="default: COURSE_PROFILE, else auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="autocast precision (default: COURSE_PRECISION, else chosen from the device)")
    if extra:
        extra(p)
    return p.parse_args()


def start(args):
    """Apply --threads and --profile; return (profile, runtime)."""
    from course_lib.config import setup
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "precision", None):
        os.environ["COURSE_PRECISION"] = args.precision      # setup() builds the runtime from it
    profile, rt = setup(args.profile)
    if args.threads:
        torch.set_num_threads(args.threads)              # setup() may apply the profile's own setting
    return profile, rt


def machine(rt) -> dict:
    info = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "device": rt.device.type,
            "precision": rt.precision,
            "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()]}   # > cores: timings are contended
    if rt.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(rt.device)
    return info


def save(name: str, profile, rt, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{profile.name}.json"
    payload = {"benchmark": name, "profile": profile.name, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": machine(rt), **result}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    print(json.dumps(payload, indent=1))
    print(f"saved {path}")
    return path
