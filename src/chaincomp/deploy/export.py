"""Export a run's model to ONNX that ONNX Runtime executes as it is: pruned models as the smaller plain
graph (BN folded), quantized layers on integer kernels, exit networks as one file per segment plus
a driver (deployed.ExitRunner) that stops at the first exit whose rule fires.

Lowering is in `lowering.py` (node by node, so quantized layers keep their exact integer codes), the
int8 rewrite in `int8.py`; this module orchestrates, writes the files and checks them in ORT. A QuantConv2d is first lowered to
    [Clip(lo*s_a, hi*s_a)] -> QuantizeLinear(s_a; uint8, zp 0 or 128 if signed)
        -> ConvInteger(int8 codes = integer_weight()) -> Cast -> Mul(s_a*s_w*bn) -> Add(bias, bn)
which is PyTorch's fake-quantized arithmetic up to float rounding (kernels='exact'). ORT runs
ConvInteger and the float values between layers slowly, so by default (kernels='int8') Int8Pass
rewrites that graph so 8-bit codes flow from layer to layer: QLinearConv requantizing straight to
the codes the next layer uses, QLinearAdd for residual adds, ReLU/MaxPool on codes, one
DequantizeLinear per float consumer, and codes (channels-last, so ORT's own layout transposes
cancel) between exit segments. ORT has no kernel below 8 bits: lower bit widths are kept exactly in
8-bit containers and the manifest says the kernels are 8-bit. A float model whose module has no
lowering here goes through torch.onnx (TorchScript) instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from .. import __version__
from ..device import describe
from ..errors import UserError
from ..exits.model import ExitNetwork
from ..io import atomic_write_bytes
from ..models import classification as zoo
from ..qmodules import QUANT_TYPES, QuantConv2d
from .int8 import Codes, Int8Pass, QUse, input_quant
from .qdq import from_qop, int8_activations, to_qdq
from .lowering import INTEGER_OPS, IR_VERSION, OPSET, Graph, Unsupported, Val, lower, may_saturate
from .runtime import Deployed, optimized_ops, ort_metric
from .kernels import kernel_note
from .targets import choose_weights, tensorrt_note

class Segment(nn.Module):
    """Blocks then one head: a whole plain model, or one stretch of an exit network ending in an exit
    head (then it also returns the features the next segment starts from)."""

    def __init__(self, items: list[tuple[str, nn.Module]], head: tuple[str, nn.Module], features: bool):
        super().__init__()
        self.names = [n for n, _ in items] + [head[0]]
        self.blocks = nn.ModuleList([m for _, m in items])
        self.head = head[1]
        self.features = features

    def forward(self, x: torch.Tensor):
        for b in self.blocks:
            x = b(x)
        return (x, self.head(x)) if self.features else self.head(x)


def segments_of(model: nn.Module) -> list[tuple[Segment, dict]]:
    """The exported pieces of a model: one for a plain model, one per exit (plus the final) otherwise."""
    if not isinstance(model, ExitNetwork):
        if hasattr(model, "blocks") and hasattr(model, "head") and type(model).forward is zoo.Sequential.forward:
            items = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
            return [(Segment(items, ("head", model.head), False), {"output": "final"})]
        return [(model, {"output": "final"})]
    segs, start = [], 0
    for p in model.exit_points + [len(model.blocks) - 1]:
        items = [(f"blocks.{i}", model.blocks[i]) for i in range(start, p + 1)]
        last = p == len(model.blocks) - 1
        head = ("head", model.head) if last else (f"exits.{p}", model.exits[str(p)])
        info = {"blocks": [start, p], "output": "final" if last else f"exit {p}"}
        segs.append((Segment(items, head, not last), info))
        start = p + 1
    return segs


KERNELS = ("int8", "exact", "qdq")
ROUNDING = ("auto", "fast", "faithful")  # export_run's rounding: where 8-bit codes may round float values
FORMATS = {"qop": "int8", "qdq": "qdq"}  # --format: QOperator ops written here, or portable Q/DQ


def _graph_of(module: nn.Module, sample: torch.Tensor, kernels: str = "int8", input_codes: Codes | None = None,
              next_use: QUse | None = None, opts: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    opts = opts or {}
    g = Graph()
    g.portable = bool(opts.get("portable"))
    x = g.note(Val("input", sample))
    if isinstance(module, Segment):
        for n, b in zip(module.names, module.blocks):
            x = lower(g, n, b, x)
        outs = [("features", x), ("logits", lower(g, module.names[-1], module.head, x))] if module.features \
            else [("logits", lower(g, module.names[-1], module.head, x))]
    else:
        outs = [("logits", lower(g, "", module, x))]
    for out_name, v in outs:  # name the graph outputs
        g.nodes.append(helper.make_node("Identity", [v.name], [out_name], name=f"out/{out_name}"))
    trt = bool(opts.get("tensorrt"))  # TensorRT: its own fusions from the exact graph (qdq.to_qdq trt)
    p = Int8Pass(g, input_codes, next_use, bool(opts.get("faithful"))) if kernels in ("int8", "qdq") and not trt \
        else None
    calibrated = p.run() if p else []
    if p and kernels == "qdq":  # the int8 pass's decisions, written as Q/DQ (qdq.from_qop)
        from_qop(g)
    qdq_multipliers = to_qdq(g, trt) if kernels == "qdq" else {}
    halved = int8_activations(g) if trt else []
    codes = {"input": input_codes is not None, "features": p is not None and p.features is not None}
    # Height and width stay free unless a lowering depends on them (an adaptive pool to k x k).
    dims = (lambda t: ["batch", *t.shape[1:]]) if g.fixed_size or sample.dim() != 4 else \
        (lambda t: ["batch", t.shape[1], *(["height", "width"] if t is sample else [None] * (t.dim() - 2))])

    def value(n: str, t: torch.Tensor):  # segment boundaries carry uint8 codes, channels-last
        d = dims(t)
        return helper.make_tensor_value_info(n, TensorProto.UINT8, [d[0], *d[2:], d[1]]) if codes.get(n) else \
            helper.make_tensor_value_info(n, TensorProto.FLOAT, d)
    graph = helper.make_graph(g.nodes, "chaincomp", [value("input", sample)], [value(n, v.t) for n, v in outs],
                              g.initializers())
    ms = [helper.make_opsetid("com.microsoft", 1)] if any(n.domain == "com.microsoft" for n in g.nodes) else []
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), *ms], ir_version=IR_VERSION,
                             producer_name="chaincomp", producer_version=__version__), \
        {"fused": g.fused, "calibrated": calibrated, "features": p.features if p else None,
         "multipliers": (p.multipliers if p else {}) | qdq_multipliers, "copied": p.copied if p else [],
         "gemm": g.gemm, "halved": halved}


def _torch_export(module: nn.Module, sample: torch.Tensor, path: Path, why: str) -> None:
    """Float modules this file does not lower: trace with torch.onnx; a failure names the operator."""
    import io
    import warnings

    features = isinstance(module, Segment) and module.features
    names = ["features", "logits"] if features else ["logits"]
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (sample,), buf, dynamo=False, opset_version=OPSET, input_names=["input"],
                              output_names=names, dynamic_axes={n: {0: "batch"} for n in ["input", *names]})
    except Exception as e:  # noqa: BLE001 - any exporter failure is the model's operator, told in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"export: ONNX cannot take module {why}: {first}") from None
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = min(m.ir_version, IR_VERSION)
    atomic_write_bytes(path, m.SerializeToString())


def write_onnx(module: nn.Module, sample: torch.Tensor, path: Path, kernels: str = "int8",
               input_codes: Codes | None = None, next_use: QUse | None = None,
               opts: dict | None = None) -> tuple[str, dict]:
    """Write one piece; returns how ('chaincomp' lowering or 'torch.onnx' for unknown float modules)
    and what the int8 pass did: layers on QLinearConv (with their negated channels), values given a
    calibrated scale."""
    module.eval()
    try:
        model, done = _graph_of(module, sample, kernels, input_codes, next_use, opts)
    except Unsupported as e:
        if any(isinstance(m, QUANT_TYPES) for m in module.modules()):
            raise UserError(f"export: no integer lowering for module {e}; quantized models need conv, linear, BN, "
                            "activations, pooling, add/mul/cat and reshapes") from None
        _torch_export(module, sample, path, str(e))
        return "torch.onnx", {"fused": {}, "calibrated": [], "features": None, "multipliers": {}, "copied": [],
                              "gemm": [], "halved": []}
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())  # temp file, fsync, rename: never half a graph
    return "chaincomp", done


def quant_layers(model: nn.Module, portable: bool = False) -> dict[str, dict]:
    """Bits and op of each quantized layer, and how its weight codes are stored (lowering.may_saturate)."""
    return {n: {"weight_bits": m.weight_bits, "act_bits": m.act_bits, "act_signed": bool(m.act_signed),
                "op": "ConvInteger" if isinstance(m, QuantConv2d) else "MatMulInteger",
                "weight_codes": "uint8+128" if not portable and may_saturate(m, m.integer_weight()[0].numpy())
                else "int8"}
            for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}


def calibration_input(data, n: int = 256) -> torch.Tensor:
    """The export sample: the first `n` training inputs (one when the split is not stacked). Besides
    fixing shapes, it calibrates the few int8 scales the model itself does not have."""
    return next(data.train.batches(n))[0]


def export_model(model: nn.Module, sample: torch.Tensor, path: str | Path, kernels: str = "qdq",
                 weights: str = "auto", target: str = "ort", faithful: bool = False) -> dict:
    """Write the model (or its segments) next to `path`; returns the manifest part that describes it.

    sample: real inputs (calibration_input), not zeros: the int8 pass takes the range of values the
    model does not quantize itself (before a residual add or a pooled head) from it.
    kernels: 'qdq' (default) the int8 pass's graph in the portable Q/DQ form (qdq.from_qop), which ORT
    fuses back into the same kernels; 'int8' 8-bit codes between layers, QLinearConv/QLinearAdd (see Int8Pass); 'exact'
    ConvInteger/MatMulInteger with a float rescale per layer, float values between layers: PyTorch's
    arithmetic up to float rounding, but slow in ORT.
    weights, target: the weight-code form (targets.choose_weights: 'auto' picks it from the target).
    faithful: keep in float every value PyTorch keeps in float (residual streams, values before pooled
    heads, the features between exit segments): no calibrated scales, no 8-bit residual stream; slower."""
    if kernels not in KERNELS:
        raise UserError(f"--kernels: '{kernels}'; choose one of {', '.join(KERNELS)}")
    form = choose_weights(weights, target)
    portable, trt = form["form"] == "portable", target == "tensorrt"
    if trt and (kernels != "qdq" or not portable):
        raise UserError("--target tensorrt: TensorRT reads the Q/DQ form with int8 weights; drop --format qop and "
                        "--weights ort")
    path = Path(path)
    segs = segments_of(model)
    files, pieces, fused, calibrated, codes, multipliers, copied, gemm, halved = [], [], {}, [], None, {}, [], [], []
    for k, (seg, info) in enumerate(segs):
        f = path if len(segs) == 1 else path.with_name(f"{path.stem}.seg{k}{path.suffix or '.onnx'}")
        with torch.no_grad():
            out = seg.eval()(sample)
        four_d = isinstance(out, tuple) and out[0].dim() == 4
        nxt = input_quant(segs[k + 1][0]) if k + 1 < len(segs) and four_d and not (faithful or trt) else None
        how, done = write_onnx(seg, sample, f, kernels, codes, nxt, {"portable": portable, "faithful": faithful,
                                                                       "tensorrt": trt})
        if codes:
            info["input_codes"] = {"dtype": "uint8", "layout": "NHWC", "scale": codes.scale, "zero_point": codes.zp}
        codes = done["features"]
        fused |= done["fused"]
        multipliers |= done["multipliers"]
        copied += done["copied"]
        gemm += done["gemm"]
        halved += [h.split("/")[0] for h in done["halved"]]
        calibrated += [c.split("/")[0] for c in done["calibrated"]]
        sample = out[0] if isinstance(out, tuple) else sample
        files.append(f.name)
        pieces.append({"file": f.name, "writer": how, **info})
    layers = quant_layers(model, portable)
    if kernels == "qdq":  # named for the kernel ORT fuses the Q/DQ group into
        for name, v in layers.items():
            v["op"] = "DQ->Conv" if v["op"] == "ConvInteger" else "QGemm" if name in gemm else "DQ->MatMul"
    for name, neg in fused.items():
        layers[name] |= {"op": "QLinearConv", "negated_channels": neg}
    for name in multipliers:  # stored codes = model's codes x k per output channel (Int8Pass.conv, to_qdq)
        layers[name]["code_multiplier"] = multipliers[name]
    is_exit = isinstance(model, ExitNetwork)
    kern = kernel_note(layers, kernels, "tensorrt" if trt else "faithful" if faithful else "fast")
    if layers and kernels in ("int8", "qdq"):
        kern["calibrated_scales"] = calibrated  # values PyTorch keeps in float, rounded to 8 bits here
        kern["second_copies"] = copied  # convs run again for a consumer at another scale (Int8Pass.copies)
    if layers and trt:
        kern["tensorrt"] = tensorrt_note(halved)
    return {"kind": "exits" if is_exit else ("quantized" if layers else "plain"), "files": files, "segments": pieces,
            "exit_rule": dict(model.exit_rule) if is_exit else None, "layers": layers, "kernels": kern,
            "weights": {**form, "uint8_layers": [n for n, v in layers.items() if v["weight_codes"] != "int8"]}}


# ---------------------------------------------------------------- the export command

def check(model: nn.Module, data, deployed: Deployed, tolerance: float = 0.5) -> dict:
    """The exported model against PyTorch on the test split: metric of both, largest logit difference
    over every output, agreement of predictions (and of exit choices); passes within `tolerance`."""
    from ..train import evaluate, predict

    res = evaluate(model, data, "test")
    onnx_metric = ort_metric(deployed, data)
    diff, agree, same_exit, n = 0.0, 0, 0, 0
    for (x, _), t_outs in zip(data.test.batches(256), predict(model, data.test, device=data.device)):
        xs = np.ascontiguousarray(x.numpy(), np.float32)
        for a, b in zip(deployed.all_outputs(xs), t_outs):
            diff = max(diff, float(np.abs(a - b.numpy()).max()))
        pred, idx = deployed(xs)
        if isinstance(model, ExitNetwork):
            from ..exits.rules import choose_exits, gather_outputs
            chosen = choose_exits(t_outs, model.exit_rule["criterion"], model.exit_rule["threshold"])
            ref = gather_outputs(t_outs, chosen)
            same_exit += int((torch.from_numpy(idx) == chosen).sum())
        else:
            ref = t_outs[-1]
        if data.task == "classification":
            agree += int((torch.from_numpy(pred).argmax(-1) == ref.argmax(-1)).sum())
        n += x.shape[0]
    out = {"split": "test", "n": n, "metric_name": data.metric_name, "torch_metric": round(res.metric, 4),
           "onnx_metric": round(onnx_metric, 4), "tolerance": tolerance, "max_abs_diff": diff,
           "passed": abs(res.metric - onnx_metric) <= tolerance, "torch_device": describe(data.device)}
    if data.task == "classification":
        out["prediction_agreement"] = round(100 * agree / max(n, 1), 3)
    if isinstance(model, ExitNetwork):
        out["exit_agreement"] = round(100 * same_exit / max(n, 1), 3)
    return out


def manifest_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.manifest.json")


def strip_fmc(model: nn.Module) -> dict | None:
    """Remove feature-map codec hooks (fmc stage) from a loaded model. The codec models the DRAM traffic
    of a layer-by-layer accelerator: ORT on a CPU keeps maps in caches and has no such operator, and
    an exported graph silently without it would not be the run's model. So it is removed on purpose
    and said so (manifest `stripped`, one printed line); the check then compares with PyTorch
    without the codec too."""
    from ..fmc.maps import find_hooks

    hooks = find_hooks(model)
    if hooks is None:
        return None
    points = list(hooks.points)
    hooks.remove()
    return {"fmc": points, "note": f"feature-map codec hooks at {len(points)} point(s) removed: ONNX Runtime has no "
                                   "such operator; the export and its check are of the model without them"}


def export_run(run_dir: str | Path, out: str | Path | None = None, stage: str | None = None, data=None,
               tolerance: float = 0.5, kernels: str = "qdq", echo=print, device: str | None = None,
               weights: str = "auto", target: str = "ort", exits: str = "all", exit_costs: dict | None = None,
               rounding: str = "auto") -> dict:
    """`chaincomp export`: write the model of a run folder, check it (in OpenVINO for target openvino, else in
    ORT), write the manifest. exits='measured' keeps only the exits that pay (exitplan; exit_costs: an
    injected cost table instead of timing). rounding: 'fast' 8-bit codes wherever an integer kernel runs,
    'faithful' codes only where PyTorch quantizes (Int8Pass), 'auto' fast, then faithful if the check fails. Writing into the run folder (the default RUN_DIR/export) takes
    its lock, as `run` and `bench` do."""
    from contextlib import nullcontext

    from ..chain import load_run, placed
    from ..io import RunLock

    choose_weights(weights, target)  # bad --weights/--target/--exits: one line before anything is loaded
    if exits not in ("all", "measured"):
        raise UserError(f"--exits: '{exits}'; choose all or measured")
    if rounding not in ROUNDING:
        raise UserError(f"--rounding: '{rounding}'; choose one of {', '.join(ROUNDING)}")
    run = load_run(run_dir, stage, data=data)
    # the PyTorch side of the accuracy check runs on --device (default: the run recipe's device)
    placed(run.data, run.recipe if device is None else run.recipe.model_copy(update={"device": device}))
    path = Path(out) if out else Path(run_dir) / "export" / "model.onnx"
    if path.suffix != ".onnx":
        raise UserError(f"--out: give a file name ending in .onnx (got {path.name})")
    inside = path.resolve().is_relative_to(Path(run_dir).resolve())
    with RunLock(run_dir) if inside else nullcontext():
        return _export(run, Path(run_dir), path, tolerance, kernels, echo, weights, target, exits, exit_costs,
                       rounding)


def _export(run, run_dir: Path, path: Path, tolerance: float, kernels: str, echo, weights: str = "auto",
            target: str = "ort", exits: str = "all", exit_costs: dict | None = None, rounding: str = "auto") -> dict:
    from ..io import write_json

    stripped = strip_fmc(run.model)
    if stripped:
        echo(f"note: {stripped['note']}")
    runtime = "openvino" if target == "openvino" else "ort"
    sample = calibration_input(run.data)
    exit_plan = None
    if exits == "measured":
        from .exitplan import apply

        run.model, exit_plan = apply(run.model, run.data, sample, write_onnx, Segment, exit_costs)
        for x in exit_plan.get("exits", []):
            echo(f"exit at block {x['point']}: {x['reason']}")
    faithful = rounding == "faithful"
    desc = export_model(run.model, sample, path, kernels, weights, target, faithful)
    result = check(run.model, run.data, Deployed(path.parent, desc, runtime=runtime), tolerance) | {"runtime": runtime}
    if not result["passed"] and rounding == "auto" and kernels != "exact" and desc["layers"]:
        # 8-bit codes for values PyTorch keeps in float (residual streams, calibrated scales) cost more than
        # the tolerance: keep those values float (slower) and say so
        failed = {k: result[k] for k in ("torch_metric", "onnx_metric", "prediction_agreement") if k in result}
        faithful, desc = True, export_model(run.model, sample, path, kernels, weights, target, faithful=True)
        result = check(run.model, run.data, Deployed(path.parent, desc, runtime=runtime), tolerance) | \
            {"runtime": runtime, "fast_check": failed}
        echo(f"note: with 8-bit codes for values PyTorch keeps in float the check failed ({failed}); "
             "exported with --rounding faithful")
    if desc["layers"] and kernels != "exact":
        desc["kernels"]["rounding"] = "faithful" if faithful else "fast"
    files = [path.parent / f for f in desc["files"]]
    ops = optimized_ops(files)
    manifest = {"format": 1, "chaincomp": __version__, "run": str(run_dir.resolve()), "stage": run.stage,
                "opset": OPSET, "input": {"name": "input", "shape": ["batch", *run.data.sample_input().shape[1:]]},
                **desc, "ort_ops": ops, "integer_ops": {k: v for k, v in ops.items() if k in INTEGER_OPS},
                "batch": "dynamic; exit networks run each segment only on the rows still pending (ExitRunner)",
                "stripped": stripped, "check": result, "exit_plan": exit_plan}
    write_json(manifest_path(path), manifest)
    k = desc["kernels"]
    echo(f"exported {run.stage} ({desc['kind']}) -> {', '.join(str(f) for f in files)}")
    echo(f"kernels: {k['note']}")
    echo(f"weights: {desc['weights']['form']} ({desc['weights']['why']})")
    echo("ORT optimized graph: " + ", ".join(f"{o} x{n}" for o, n in ops.items()))
    if desc["exit_rule"]:
        echo(f"exit rule: {desc['exit_rule']} (driver: chaincomp.deployed.ExitRunner)")
    extra = "".join(f", {key.replace('_', ' ')} {result[key]:.1f}%" for key in ("prediction_agreement",
                                                                                "exit_agreement") if key in result)
    echo(f"check on {result['n']} test samples: PyTorch {result['metric_name']} {result['torch_metric']:.2f}, "
         f"{'OpenVINO' if runtime == 'openvino' else 'ONNX Runtime'} {result['onnx_metric']:.2f} "
         f"(tolerance {tolerance}), max-abs output diff "
         f"{result['max_abs_diff']:.3g}{extra}")
    echo(f"manifest: {manifest_path(path)}")
    return manifest
