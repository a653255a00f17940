"""Write (or check) the KubeRay manifests in cluster/k8s/ from the project's sources.

    python -m cluster.kuberay                       # regenerate cluster/k8s/*.yaml
    python -m cluster.kuberay --check               # exit 1 if a committed manifest is out of date
    python -m cluster.kuberay --image REG/maas:0.1.0 --gpu-image REG/maas:0.1.0-gpu --bucket B --out DIR

The RayService's serveConfigV2 is deployments/serve_config.yaml (see maas/kuberay.py for the two
settings Kubernetes changes); the Ray version comes from pyproject.toml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maas.kuberay import MANIFEST_DIR, KubeRayConfig, render_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.kuberay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=MANIFEST_DIR, help=f"folder to write (default: {MANIFEST_DIR})")
    p.add_argument("--image", default=None, help="project image for the head and CPU workers (cluster/Dockerfile)")
    p.add_argument("--gpu-image", default=None, help="project image for GPU workers (built with the GPU base)")
    p.add_argument("--bucket", default=None, help="S3 bucket for the registry, runs and data")
    p.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("image", args.image), ("gpu_image", args.gpu_image), ("bucket", args.bucket)) if v}
    rendered = render_all(KubeRayConfig(**overrides))
    if args.check:
        stale = [name for name, text in rendered.items()
                 if not (args.out / name).is_file() or (args.out / name).read_text() != text]
        for name in stale:
            print(f"out of date: {args.out / name} (run python -m cluster.kuberay)", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
