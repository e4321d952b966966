#!/usr/bin/env python
"""mAP right after transfer, before any training: every inserted (function-preserving) YOLOv8n variant vs yolov8n.

For the baseline checkpoint, the hand-written cfg/yolov8-dat.yaml and each generated variant
cfg/yolov8-<family>-<position>.yaml with an *inserted* block (sppf_before, sppf_after, neck, head), the variant is
built at scale n, loaded with ``YOLO(variant).load(weights)`` (rows aligned with the checkpoint's, see
yolo_attn.transfer; the variant's record is not needed) and validated on the dataset with the same settings as the
baseline. Inserted blocks start as the identity, so mAP50-95 must equal the baseline's within ``--tol``
(exit code 1 otherwise). Needs ../shared/data (weights and coco128); slow on CPU (about a minute per model).

Examples:
    python scripts/check_transfer_map.py
    python scripts/check_transfer_map.py --families dat --positions sppf_before --batch 4 --json out/map.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
INSERTED = ("sppf_before", "sppf_after", "neck", "head")


def _val(model, a) -> dict:
    m = model.val(data=a.data, imgsz=a.imgsz, batch=a.batch, device=a.device, plots=False, verbose=False, workers=0)
    return {"mAP50": float(m.box.map50), "mAP50-95": float(m.box.map)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(SHARED / "weights" / "yolov8n.pt"))
    p.add_argument("--data", default=str(SHARED / "coco128.yaml"))
    p.add_argument("--families", nargs="+", default=None, help="default: every family with generated cfg/ variants")
    p.add_argument("--positions", nargs="+", default=list(INSERTED))
    p.add_argument("--no-headline", dest="headline", action="store_false", help="leave out cfg/yolov8-dat.yaml")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tol", type=float, default=0.002, help="largest allowed |mAP50-95 - baseline|")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    for need in (a.weights, a.data):
        if not Path(need).is_file():
            print(f"missing {need}: this check needs the shared weights and dataset", file=sys.stderr)
            return 2

    from yolo_attn._compat import YOLO
    from yolo_attn.edit import families
    from yolo_attn.markdown import table

    fams = a.families or list(families(packaged=True))  # registers the blocks (and the transfer hook)
    rows = []
    t = time.time()
    base = _val(YOLO(a.weights), a)
    rows.append({"model": Path(a.weights).name, **base, "delta": 0.0, "seconds": round(time.time() - t, 1)})
    print(f"baseline {Path(a.weights).name}: mAP50 {base['mAP50']:.4f} mAP50-95 {base['mAP50-95']:.4f}", flush=True)
    sources = [ROOT / "cfg" / "yolov8-dat.yaml"] if a.headline else []
    sources += [ROOT / "cfg" / f"yolov8-{fam}-{pos}.yaml" for fam in fams for pos in a.positions]
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            cfg = Path(tmp) / src.name.replace("yolov8-", "yolov8n-", 1)  # the 'n' in the name selects scale n
            shutil.copy(src, cfg)
            t = time.time()
            r = _val(YOLO(str(cfg)).load(a.weights), a)
            delta = r["mAP50-95"] - base["mAP50-95"]
            rows.append({"model": src.name, **r, "delta": delta, "seconds": round(time.time() - t, 1)})
            print(f"{src.name}: mAP50 {r['mAP50']:.4f} mAP50-95 {r['mAP50-95']:.4f} delta {delta:+.4f}", flush=True)
    header = ["model", "mAP50", "mAP50-95", "delta mAP50-95", "val s"]
    cells = [
        [r["model"], f"{r['mAP50']:.4f}", f"{r['mAP50-95']:.4f}", f"{r['delta']:+.4f}", r["seconds"]] for r in rows
    ]
    print("\n" + table(header, cells))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1))
    bad = [r["model"] for r in rows if abs(r["delta"]) > a.tol]
    print(
        f"\n{'FAIL' if bad else 'OK'}: {len(rows) - 1} variants, max |delta| "
        f"{max(abs(r['delta']) for r in rows):.4f} (tolerance {a.tol})" + (f"; over: {', '.join(bad)}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
