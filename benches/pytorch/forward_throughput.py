#!/usr/bin/env python3
"""CPU forward-pass throughput of radserve's model architectures in PyTorch.

The PyTorch peer of the Rust criterion bench `cargo bench -p radserve-benches --bench
model_forward`: the same architectures at full size, the same input sizes, eval mode, CPU.

- resnet18, resnet34, densenet121: torchvision's models with a 1-channel stem
  (conv1 / features.conv0 replaced by nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3,
  bias=False)) and num_classes=4; input N×1×224×224.
- unet: MONAI BasicUNet(spatial_dims=2, in_channels=1, out_channels=1), default features
  (32, 32, 64, 128, 256, 32); input N×1×256×256.
- densenet-demo, unet-demo: the demo packages' architectures and input sizes, read from
  models/zoo/{chest-xray-findings,ct-lung-nodule}/model.toml: torchvision's DenseNet class with
  the package's growth rate, blocks, stem width and bottleneck size (conv0 replaced for its input
  channels), and BasicUNet with the package's features.

Weights are seeded random (torch.manual_seed(0) before each model is built; nothing is
downloaded). Every case runs eval() under torch.inference_mode(): two warm-up forwards, then
forwards until at least --seconds have passed and at least 3 have run. It reports the median
time of one forward of a batch and images/s = batch / median.

    pip install torch torchvision monai safetensors
    python3 benches/pytorch/forward_throughput.py --threads 2 --batches 1,4,8,16 \\
        --archs resnet18,resnet34,densenet121,unet --seconds 3 --json /tmp/pytorch_forward.json

--weights-out DIR also writes each model's weights as DIR/ARCH.safetensors with PyTorch's
state_dict names, so the Rust bench can load the very same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ARCHS = ("resnet18", "resnet34", "densenet121", "unet", "densenet-demo", "unet-demo")
SEED = 0


def demo_package(name: str) -> tuple[dict, tuple[int, int]]:
    """A demo package's [architecture] table and input size, from models/zoo/NAME/model.toml."""
    import tomllib

    path = Path(__file__).resolve().parents[2] / "models" / "zoo" / name / "model.toml"
    manifest = tomllib.loads(path.read_text())
    rows, columns = manifest["input"]["target_size"]
    return manifest["architecture"], (rows, columns)


def build(arch: str) -> tuple[torch.nn.Module, tuple[int, int]]:
    """The model (seeded random init, eval mode) and its input height × width."""
    import torch.nn as nn

    torch.manual_seed(SEED)
    if arch in ("resnet18", "resnet34", "densenet121"):
        import torchvision

        model = getattr(torchvision.models, arch)(num_classes=4)  # weights=None: random init
        stem = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if arch == "densenet121":
            model.features.conv0 = stem
        else:
            model.conv1 = stem
        hw = (224, 224)
    elif arch == "densenet-demo":
        # the chest-xray-findings demo package's DenseNet, as its model.toml configures it
        import torchvision

        config, hw = demo_package("chest-xray-findings")
        model = torchvision.models.DenseNet(
            growth_rate=config["growth_rate"], block_config=tuple(config["block_config"]),
            num_init_features=config["num_init_features"], bn_size=config["bn_size"],
            num_classes=config["num_outputs"],
        )
        model.features.conv0 = nn.Conv2d(config["in_channels"], config["num_init_features"],
                                         kernel_size=7, stride=2, padding=3, bias=False)
    elif arch == "unet":
        from monai.networks.nets import BasicUNet

        model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1)
        hw = (256, 256)
    elif arch == "unet-demo":
        # the ct-lung-nodule demo package's U-Net, as its model.toml configures it
        from monai.networks.nets import BasicUNet

        config, hw = demo_package("ct-lung-nodule")
        model = BasicUNet(spatial_dims=2, in_channels=config["in_channels"],
                          out_channels=config["num_outputs"], features=tuple(config["features"]))
    else:
        raise ValueError(f"unknown arch {arch!r}")
    return model.eval(), hw


def measure(model: torch.nn.Module, x: torch.Tensor, seconds: float, warmup: int = 2) -> list[float]:
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        start = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return times


def parse_list(text: str, kind=str) -> list:
    return [kind(v.strip()) for v in text.split(",") if v.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (interop: 1)")
    ap.add_argument("--batches", default="1,4,8,16", help="comma-separated batch sizes")
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, of {','.join(ARCHS)}")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="measure each case at least this long after warm-up (and >= 3 forwards)")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    ap.add_argument("--weights-out", metavar="DIR",
                    help="also write each model's weights as DIR/ARCH.safetensors (state_dict names)")
    args = ap.parse_args()

    batches = parse_list(args.batches, int)
    archs = parse_list(args.archs)
    for a in archs:
        if a not in ARCHS:
            ap.error(f"unknown arch {a!r}; choose from {','.join(ARCHS)}")
    if not batches or min(batches) < 1:
        ap.error("--batches needs positive integers")

    # Before any parallel work: set_num_interop_threads fails once the pool has started.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), 1 inter-op, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}", file=sys.stderr)

    results = []
    header = f"{'arch':<12} {'input':>9} {'batch':>5} {'images/s':>10} {'ms/batch (median)':>18} {'iters':>6}"
    print(header)
    print("-" * len(header))
    for arch in archs:
        model, (h, w) = build(arch)
        if args.weights_out:
            from safetensors.torch import save_file

            out = Path(args.weights_out)
            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                      str(out / f"{arch}.safetensors"))
        for batch in batches:
            torch.manual_seed(SEED + batch)
            x = torch.randn(batch, 1, h, w)
            times = measure(model, x, args.seconds)
            median = statistics.median(times)
            row = {
                "arch": arch,
                "batch": batch,
                "images_per_s": batch / median,
                "median_ms": median * 1e3,
                "iterations": len(times),
                "threads": args.threads,
                "torch_version": torch.__version__,
                "input_shape": [batch, 1, h, w],
                "mean_ms": statistics.fmean(times) * 1e3,
                "min_ms": min(times) * 1e3,
            }
            results.append(row)
            print(f"{arch:<12} {f'{h}x{w}':>9} {batch:>5} {row['images_per_s']:>10.2f} "
                  f"{row['median_ms']:>18.1f} {len(times):>6}", flush=True)
        del model

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
