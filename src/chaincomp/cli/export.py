"""`chaincomp export`: a run's model to ONNX, checked in ONNX Runtime. Parsing and printing only; the work is in deploy/export.py."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError


def _cmd_export(args: argparse.Namespace) -> int:
    from ..deploy.export import export_run
    from ..io import prepare_output

    if not 0 <= args.tolerance <= 100:
        raise UserError(f"--tolerance: {args.tolerance}; give metric points in 0..100")
    if args.out:
        prepare_output(args.out, kind="file")     # before anything is built
    if args.device is not None:
        from ..device import resolve
        resolve(args.device, "--device")
    if args.kernels and args.format == "qdq":
        raise UserError(f"--kernels {args.kernels}: applies to --format qop only (Q/DQ is the int8 graph, portable)")
    kernels = args.kernels or ("int8" if args.format == "qop" else "qdq")
    manifest = export_run(args.run_dir, args.out, args.stage, tolerance=args.tolerance, kernels=kernels,
                          device=args.device, weights=args.weights, target=args.target, exits=args.exits,
                          rounding=args.rounding)
    c = manifest["check"]
    if not c["passed"]:
        print(f"chaincomp: export check failed: ONNX Runtime {c['metric_name']} {c['onnx_metric']:.2f} vs PyTorch "
              f"{c['torch_metric']:.2f} differ by more than {c['tolerance']} (files kept for inspection)",
              file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    from . import add_device

    e = sub.add_parser("export", help="export a run's model to ONNX (integer kernels, exit segments), checked in ORT")
    e.add_argument("run_dir", help="folder of a finished `chaincomp run`")
    e.add_argument("--out", help="ONNX file (default RUN_DIR/export/model.onnx; segments and manifest beside it)")
    e.add_argument("--stage", help="export the model after this stage (default: the last finished one)")
    e.add_argument("--tolerance", type=float, default=0.5,
                   help="largest metric difference ONNX Runtime vs PyTorch on the test set (default 0.5 points)")
    e.add_argument("--format", choices=("qdq", "qop"),
                   help="qdq = portable QuantizeLinear/DequantizeLinear form (default; ORT fuses it into the same "
                        "integer kernels, OpenVINO and TensorRT read it); qop = ORT's QOperator ops written here")
    e.add_argument("--kernels", choices=("int8", "exact"),
                   help="with --format qop: int8 = 8-bit codes from layer to layer on QLinearConv/QLinearAdd "
                        "(its default); exact = ConvInteger with a float rescale per layer (PyTorch's "
                        "arithmetic up to float rounding, slow in ORT)")
    e.add_argument("--weights", default="auto", choices=("auto", "portable", "ort"),
                   help="weight codes: portable = int8 symmetric (TensorRT, OpenVINO's integer kernels); ort = "
                        "uint8 + 128 in layers ORT's int8 kernels could saturate on x86 without VNNI; auto "
                        "(default) = chosen from --target and this CPU, said in the manifest's weights")
    e.add_argument("--target", default="ort", choices=("ort", "openvino", "tensorrt"),
                   help="runtime the file is for (default ort); openvino also runs the accuracy check in OpenVINO")
    e.add_argument("--exits", default="all", choices=("all", "measured"),
                   help="exit networks: all = one segment per exit (default); measured = time the pieces in ORT "
                        "and keep only exits whose saving beats their cost, merging segments (reasons in the manifest)")
    e.add_argument("--rounding", default="auto", choices=("auto", "fast", "faithful"),
                   help="fast = 8-bit codes wherever an integer kernel runs, also for values PyTorch keeps in "
                        "float (residual streams, features between exit segments); faithful = codes only where "
                        "PyTorch quantizes, those values float (slower, answers as PyTorch's); auto (default) = "
                        "fast, then faithful if the accuracy check fails")
    add_device(e, "run the PyTorch side of the accuracy check")
    e.set_defaults(func=_cmd_export)
