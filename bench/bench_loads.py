"""`loads` on a real-size model: peak RSS of the check against the size of the file it loads.

The WMTP lock declares `loads` on the 7B MTP model in float16 (13.5 GB) and on Sheared-LLaMA
2.7B; the machine has 24 GB. The check must read the safetensors file tensor by tensor (never
a whole-file mapping), hold one copy of the weights and run one forward pass on real tokens:
peak RSS at most file size + 2 GB. A 7B-shaped Meta-layout MTP file (dim 4096, 32 layers of
which 3 extra heads, vocab 32000: 6,738,415,616 parameters) is generated in float16 with seeded
small values, then the registered `loads` check runs on it in a child process that reports its
own VmHWM. `--quick`: the same layout at dim 1024, 8 layers (~0.25 GB).

    python3 bench/bench_loads.py [--quick] [--workdir DIR]     # prints the rows as JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import GIB, Row, python, run_child  # noqa: E402
from bench_models import vm_hwm  # noqa: E402

MARGIN = 2 * 10**9  # the bound: file size + 2 GB
FULL = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "vocab_size": 32000, "multiple_of": 256,
        "ffn_dim_multiplier": 1.0, "norm_eps": 1e-05, "rope_theta": 10000.0, "n_future_tokens": 4}
QUICK = {**FULL, "dim": 1024, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8}


def make_model(folder: Path, params: dict) -> Path:
    """A float16 safetensors file with the tensors of a Meta MTP `params`, written one tensor at a time."""
    import torch
    from reconcile_testing.tokenizer import write_tokenizer_model

    from reconciler.models.nets import expected_shapes
    from reconciler.models.safetensors_io import METADATA, SafetensorsWriter

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params))
    write_tokenizer_model(folder / "tokenizer.model")
    shapes = expected_shapes("mtp", params)
    # Values: a seeded N(0, 0.02) block tiled over each tensor (filling 6.7e9 fresh normals takes
    # minutes on 2 cores; the check cares about shapes, dtype and finite logits, not about variety).
    block = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02
    path = folder / "model.safetensors"
    with path.open("wb") as f:
        writer = SafetensorsWriter(f, {n: ("F16", s) for n, s in shapes.items()}, METADATA, digests=False)
        for name in writer.order:
            shape = shapes[name]
            n = torch.Size(shape).numel()
            t = torch.ones(shape) if len(shape) == 1 else block.repeat(-(-n // block.numel()))[:n].view(shape)
            writer.write(name, t)
        writer.close()
    return path


def child_loads(folder: str) -> dict:
    """Run the registered `loads` check on FOLDER/model.safetensors; its time and own peak RSS."""
    import torch  # noqa: F401 - import cost is not the check's

    from reconciler.registry import CHECKS, CheckContext, load_plugins
    load_plugins()
    root = Path(folder)
    imported = vm_hwm()
    ctx = CheckContext(root=root, deep=True, artifact="model.safetensors", lock=None)
    t0 = time.perf_counter()
    detail = CHECKS["loads"].fn(root / "model.safetensors", {"arch": "mtp", "config": "params.json",
                                                            "tokenizer": "tokenizer.model", "max_params": 7e9}, ctx)
    return {"seconds": time.perf_counter() - t0, "detail": detail, "import_rss_bytes": imported,
            "peak_rss_bytes": vm_hwm()}


def run(work: Path, quick: bool) -> list[Row]:
    """The `loads` row: the check's own peak RSS over the file size, against file + 2 GB."""
    path = make_model(work / "model", QUICK if quick else FULL)
    size = path.stat().st_size
    res = run_child([python(), str(Path(__file__).resolve()), "--child", str(path.parent)])
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(f"loads child exited {res.returncode}: {res.stderr.strip()[-500:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    peak = info["peak_rss_bytes"]
    label = f"8 loads check, 7B-layout MTP float16 ({size / 1e9:.2f} GB file{', quick' if quick else ''})"
    goal = (size + MARGIN) / size
    return [Row(label, "peak RSS / file size (tensor by tensor, one forward pass)", f"{peak / GIB:.2f} GiB",
                f"file {size / GIB:.2f} GiB", f"{peak / size:.2f}x", f"<= {goal:.2f}x (file + 2 GB)",
                "yes" if peak <= size + MARGIN else "no", {**info, "file_bytes": size}),
            Row(label, "wall time of the check (read + forward pass on CPU)", f"{info['seconds']:.0f} s",
                data={"detail": info["detail"]})]


def main(argv: list[str]) -> int:
    """`--child FOLDER` runs the check; otherwise `[--quick] [--workdir DIR]` runs the whole bench."""
    if argv[:1] == ["--child"]:
        print(json.dumps(child_loads(argv[1])))
        return 0
    quick = "--quick" in argv
    work = Path(argv[argv.index("--workdir") + 1]) if "--workdir" in argv else Path("bench-out/work/loads")
    for row in run(work, quick):
        print(json.dumps(row.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
