"""Export matrix: per block family and format, export time, file size, CPU latency and max difference from PyTorch.

Each headline cfg (``yolov8n-{bot,dat,coat}.yaml``, random weights; the blocks' zero-initialised residual layers get
small random values so that attention contributes to the output) is exported with Ultralytics' exporter at 640 and
run on one 640x640 image, batch 1, on the CPU with one thread (PyTorch eager with Conv+BN fused as the exporter
does, onnxruntime and OpenVINO alike; OpenVINO runs in fp32, ``half`` stores fp16 weights). Latency is
the median CPU time (``time.process_time``) of ``--runs`` calls after one warm-up; "max diff" is the largest absolute
difference of the raw output ``(1, 4 + nc, 8400)`` (boxes in pixels, scores in [0, 1]) from PyTorch eager. Formats
whose runtime is not installed are left out. Prints a Markdown table.

Usage: ``python benchmarks/export_matrix.py [--families bot dat coat] [--runs 5] [--imgsz 640]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FORMATS = ("pytorch", "torchscript", "onnx", "onnx-gather", "openvino", "openvino-half")


@contextlib.contextmanager
def _cwd(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def _cpu_ms(fn, x, runs: int) -> float:
    fn(x)  # warm-up (allocations, lazy init)
    times = []
    for _ in range(runs):
        t = time.process_time()
        fn(x)
        times.append(time.process_time() - t)
    return 1000 * statistics.median(times)


def _first(y) -> np.ndarray:
    y = y[0] if isinstance(y, (list, tuple)) else y
    return y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


def _build(family: str):
    from ultralytics import YOLO

    from yolo_attn import registry

    torch.manual_seed(0)
    model = YOLO(f"yolov8n-{family}.yaml")
    ours = tuple(sp.cls for sp in registry.specs())
    for m in model.model.modules():
        if isinstance(m, ours):
            for p in m.parameters():
                if p.dim() and not p.detach().abs().sum():
                    torch.nn.init.normal_(p, std=0.02)
    return model


def _runner(fmt: str, path: Path):
    base = fmt.partition("-")[0]
    if base == "torchscript":
        ts = torch.jit.load(str(path))
        return lambda x: _first(ts(x))
    if base == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x.numpy()})[0]
    import openvino as ov

    hint = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(next(path.glob("*.xml"))), "CPU", hint)
    return lambda x: compiled(x.numpy())[0]


def _available(fmt: str) -> bool:
    import importlib.util

    need = {"onnx": "onnxruntime", "openvino": "openvino"}.get(fmt.partition("-")[0])
    return need is None or importlib.util.find_spec(need) is not None


def run(families: list[str], imgsz: int, runs: int) -> list[dict]:
    from yolo_attn.nn import set_sampler

    torch.set_num_threads(1)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    rows = []
    for family in families:
        model = _build(family)
        net = model.model.float().eval()
        fused = copy.deepcopy(net).fuse(verbose=False)  # Conv+BN folded, as in every exported model
        with torch.no_grad():
            ref = _first(net(x))
            eager_ms = _cpu_ms(fused, x, runs)
        rows.append(dict(family=family, format="pytorch (eager)", export_s=None, mb=None, ms=eager_ms, diff=0.0))
        for fmt in FORMATS[1:]:
            if (fmt == "onnx-gather" and family != "dat") or not _available(fmt):
                continue
            base, _, variant = fmt.partition("-")
            m = model
            if variant == "gather":
                m = copy.deepcopy(model)
                set_sampler(m.model, "gather")
            with tempfile.TemporaryDirectory() as tmp, _cwd(tmp):  # exports land in the cwd
                kw = {"format": base, "imgsz": imgsz, "half": variant == "half", "verbose": False}
                if base == "onnx":
                    kw["simplify"] = False
                t = time.perf_counter()
                path = Path(m.export(**kw))
                export_s = time.perf_counter() - t
                fn = _runner(fmt, path)
                with torch.no_grad():
                    diff = float(np.abs(fn(x) - ref).max())
                    ms = _cpu_ms(fn, x, runs)
                label = {"onnx-gather": "onnx (gather sampler)", "openvino-half": "openvino half"}.get(fmt, fmt)
                rows.append(dict(family=family, format=label, export_s=export_s, mb=_size_mb(path), ms=ms, diff=diff))
    return rows


def markdown(rows: list[dict], imgsz: int) -> str:
    lines = [
        f"| family | format | export (s) | size (MB) | CPU latency {imgsz}, 1 thread (ms) | vs eager | max diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    eager = {r["family"]: r["ms"] for r in rows if r["export_s"] is None}
    for r in rows:
        export_s = "-" if r["export_s"] is None else f"{r['export_s']:.1f}"
        mb = "-" if r["mb"] is None else f"{r['mb']:.1f}"
        lines.append(
            f"| {r['family']} | {r['format']} | {export_s} | {mb} | {r['ms']:.0f} | "
            f"{r['ms'] / eager[r['family']]:.2f}x | {r['diff']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["bot", "dat", "coat"])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import yolo_attn

    yolo_attn.register()
    print(markdown(run(args.families, args.imgsz, args.runs), args.imgsz))


if __name__ == "__main__":
    main()
