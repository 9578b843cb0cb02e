"""`chaincomp bench`: measured latency in ONNX Runtime against the baseline and peers. Parsing only; the work is in deploy/bench.py."""
from __future__ import annotations

import argparse


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..deploy.bench import bench_run

    bench_run(args.run_dir, args.batch, args.runs, args.warmup, args.threads, peers=not args.no_peers,
              peer_epochs=args.peer_epochs, stage=args.stage, smaller=args.smaller_peers, fmt=args.format)
    return 0


def register(sub) -> None:
    b = sub.add_parser("bench", help="latency/throughput in ONNX Runtime: baseline, compressed model and peers")
    b.add_argument("run_dir", help="folder of a finished `chaincomp run`")
    b.add_argument("--stage", help="bench the model after this stage (default: the last finished one)")
    b.add_argument("--batch", type=int, action="append", help="batch size; repeat for several (default 1 and 64)")
    b.add_argument("--format", default="qdq", choices=("qdq", "qop"),
                   help="file of the compressed model: qdq = portable Q/DQ (default), qop = ORT's QOperator ops; "
                        "the other format is timed beside it, and the Q/DQ file also in OpenVINO when installed")
    b.add_argument("--runs", type=int, default=30, help="timed runs per model and batch size (default 30)")
    b.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--threads", type=int, help="ORT intra-op threads (default: the cores this process may use)")
    b.add_argument("--peer-epochs", type=int, default=1, choices=range(0, 101), metavar="N",
                   help="fine-tuning epochs of the Torch-Pruning peer (default 1; 0: none)")
    b.add_argument("--no-peers", action="store_true", help="skip ORT static int8 and Torch-Pruning peers")
    b.add_argument("--smaller-peers", action="store_true",
                   help="also train the zoo's smaller networks (ResNet-8/14/20/32 below the run's, or 1/4 and 1/2 "
                        "width) with the baseline budget, int8 by ORT: the accuracy/latency front (slow)")
    b.set_defaults(func=_cmd_bench)
