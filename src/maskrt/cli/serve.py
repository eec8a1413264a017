"""`maskrt serve` (a real Triton server on this machine, PyTriton) and `maskrt triton` (a model repository)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from maskrt.cli.options import (
    GRAPHS,
    add_command,
    add_model,
    add_serving,
    add_threads,
    interrupt,
    model_inputs,
    port,
    positive_int,
    predictor_options,
    unit_float,
)
from maskrt.core.defaults import DEFAULT_SCORE_THRESHOLD
from maskrt.core.errors import MaskrtError


def cmd_serve(args: argparse.Namespace) -> int:
    from maskrt.runtime.predictor import Predictor, default_backend
    from maskrt.serving.server import ServeOptions, bound_malloc_arenas, check_ports_free, pytriton_available, serve

    pytriton_available()  # before loading the model: say how to install it first
    bound_malloc_arenas()  # before the model's and the server's threads start
    port = args.port
    grpc_port = args.grpc_port or port + 1
    metrics_port = args.metrics_port or port + 2
    if len({port, grpc_port, metrics_port}) != 3:
        raise MaskrtError(f"HTTP, gRPC and metrics need three different ports, got {port}, {grpc_port}, "
                          f"{metrics_port}")
    for p in (grpc_port, metrics_port):
        if not 1 <= p <= 65535:
            raise MaskrtError(f"port {p} is outside 1..65535 (--port {port} puts gRPC and metrics at +1, +2)")
    options = ServeOptions(host=args.host, http_port=port, grpc_port=grpc_port, metrics_port=metrics_port,
                           model_name=args.name, max_batch=args.max_batch, queue_delay_us=args.queue_delay_us,
                           max_pixels=int(args.max_megapixels * 1e6), verbose=args.verbose)
    signal.signal(signal.SIGINT, interrupt)  # Ctrl-C stops the server even where SIGINT came in ignored (a `&` job)
    if (args.model is None) == (args.repository is None):
        raise MaskrtError("serve needs one of --model (an export folder, engine or checkpoint) or --repository")
    repository = None
    if args.repository:
        repository = Path(args.repository).resolve()
        if not repository.is_dir() or not any(repository.glob("*/config.pbtxt")):
            raise MaskrtError(f"{args.repository}: not a Triton model repository (no MODEL/config.pbtxt; `maskrt "
                              "triton` writes one)")
    check_ports_free(options)  # before loading the model
    predictor = None
    if args.model:  # without --backend, what the model file is says how it runs
        backend = args.backend or default_backend(args.model)
        predictor = Predictor.open(args.model, **{**predictor_options(args, args.score_threshold), "backend": backend})
    urls = options.urls()

    def ready() -> None:
        if predictor is not None:
            what = (f"{args.model} as model '{args.name}' ({predictor.backend.name}); dynamic batching up to "
                    f"{args.max_batch} images")
        else:
            models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))  # type: ignore[union-attr]
            what = f"the models of {repository}: {', '.join(models)}"
        print(f"serving {what}, with Triton Inference Server: HTTP {urls['http']}, gRPC {urls['grpc']}, metrics "
              f"{urls['metrics']}; Ctrl-C stops", flush=True)

    try:
        serve(predictor, options, repository=repository, on_ready=ready)
    except KeyboardInterrupt:
        pass
    finally:
        if predictor is not None:
            predictor.close()
    print("stopped", flush=True)
    return 0


def cmd_triton(args: argparse.Namespace) -> int:
    from maskrt.serving.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(name=args.name, network=args.network, graph=args.graph, max_batch=args.max_batch,
                                instances=args.instances, queue_delay_us=args.queue_delay_us,
                                score_threshold=args.score_threshold, max_pixels=int(args.max_megapixels * 1e6),
                                threads=args.threads or 0)
    repo = write_repository(args.model, args.out, options, force=args.force)
    batching = (f"dynamic batching up to {repo.max_batch_size} images" if repo.batched else
                "no batching (static batch 1 export)")
    print(f"wrote {repo.path}: models {', '.join(repo.models)} ({repo.network} network, {batching}, "
          f"{args.instances} instance(s) each)")
    print(f"start it: {repo.command}   (see {repo.path / 'README.md'})")
    for warning in repo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of this module's commands."""
    srv = add_command(sub, "serve", "serve a model with a real Triton Inference Server (PyTriton) on this machine: "
                      "HTTP, gRPC, health, metrics, dynamic batching; images in, COCO results out (Ctrl-C stops)")
    add_model(srv, required=False)
    srv.set_defaults(backend=None)  # default: onnxruntime for an export folder, tensorrt for an engine (ENGINE.json
    # beside it), torch for a checkpoint
    srv.add_argument("--repository", help="instead of --model: serve a `maskrt triton --network python` model "
                     "repository with the Triton binary PyTriton ships (python backend only)")
    srv.add_argument("--score-threshold", type=unit_float, default=DEFAULT_SCORE_THRESHOLD,
                     help="drop detections below, in [0, 1] (default %(default)s, as predict)")
    add_threads(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                     "only; 0.0.0.0 for every interface)")
    srv.add_argument("--port", type=port, default=8000, help="HTTP port (default 8000); gRPC and metrics default "
                     "to PORT+1 and PORT+2")
    srv.add_argument("--grpc-port", type=port, help="gRPC port (default PORT+1)")
    srv.add_argument("--metrics-port", type=port, help="Prometheus metrics port (default PORT+2)")
    add_serving(srv, name_help="model name clients ask for (default maskrt)",
                batch_help="largest dynamic batch and request, in images (default %(default)s; 1 = no batching)")
    srv.add_argument("--verbose", action="store_true", help="Triton's and PyTriton's logs")
    srv.set_defaults(func=cmd_serve, io=lambda a: ([], []))

    tri = add_command(sub, "triton", "write a Triton Inference Server model repository (ensemble of pre-processing, "
                      "network, post-processing) for an engine or an export folder")
    tri.add_argument("--model", required=True, help="engine file (tensorrt_plan) or export folder")
    tri.add_argument("--out", required=True, help="repository folder to write")
    add_serving(tri, name_help="the ensemble's name; its steps are NAME_preprocess, NAME_network, NAME_postprocess",
                batch_help="max_batch_size of every model (default %(default)s; a static batch 1 export does not "
                           "batch)")
    tri.add_argument("--network", choices=["onnxruntime", "tensorrt", "python"],
                     help="network backend (default: tensorrt for an engine, onnxruntime for an export folder; "
                     "python runs the graph with ONNX Runtime in Triton's python backend)")
    tri.add_argument("--graph", default="portable", choices=list(GRAPHS),
                     help="the export's graph (onnxruntime: portable or portable_int8; python: any)")
    tri.add_argument("--instances", type=positive_int, default=1, help="instances of each model (default 1)")
    tri.add_argument("--score-threshold", type=unit_float, default=DEFAULT_SCORE_THRESHOLD,
                     help="post-processing drops detections below, in [0, 1] (default %(default)s)")
    tri.add_argument("--threads", type=positive_int, help="--network python: ONNX Runtime threads per instance")
    tri.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    tri.set_defaults(func=cmd_triton, io=lambda a: ([a.out], model_inputs(a)))
