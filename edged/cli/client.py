"""Commands that talk to a running daemon: `edged models | pin | unpin | evict | load | infer |
health`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edged.cli.common import address, with_client
from edged.errors import EdgedError


def cmd_models(args: argparse.Namespace) -> int:
    import grpc

    from edged.api import portfolio_pb2, portfolio_pb2_grpc

    with grpc.insecure_channel(address(args)) as channel:
        stub = portfolio_pb2_grpc.PortfolioStub(channel)
        response = stub.ListModels(portfolio_pb2.ListModelsRequest(), timeout=args.timeout)
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(response))
        return 0
    b = response.budget
    print(
        f"budget {b.bytes / 2**20:.1f} MiB ({b.limited_by}), "
        f"resident {b.accounted_bytes / 2**20:.1f} MiB, "
        f"available {b.available_bytes / 2**20:.0f} MiB"
    )
    for model in response.models:
        pinned = "  pinned" if model.pinned else ""
        print(
            f"{model.name}  active={model.active_version}  {model.state}  "
            f"rate={model.predicted_rate:.3f}/s{pinned}  {model.reason}"
        )
        for version in model.versions:
            marker = "*" if version.active else " "
            for v in version.variants:
                resident = f"{v.resident_bytes / 2**20:.1f} MiB" if v.resident_bytes else ""
                measured = (
                    f" measured {v.accuracy:.1%} on {v.labels} labels (ECE {v.ece:.3f})"
                    if v.labels
                    else ""
                )
                print(
                    f"  {marker}{version.version:<6} {v.id:<8} {v.format:<5} "
                    f"q={v.quality:.3f} {v.state:<12} {resident:<10} {v.reason}{measured}"
                )
    return 0


def cmd_portfolio(args: argparse.Namespace) -> int:
    """pin / unpin / evict / load: one call on edged.v1.Portfolio."""
    import grpc

    from edged.api import portfolio_pb2 as pb
    from edged.api import portfolio_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address(args)) as channel:
        stub = pb_grpc.PortfolioStub(channel)
        if args.command == "pin":
            stub.Pin(pb.PinRequest(model=args.model), timeout=args.timeout)
        elif args.command == "unpin":
            stub.Unpin(pb.PinRequest(model=args.model), timeout=args.timeout)
        elif args.command == "evict":
            stub.Evict(pb.EvictRequest(model=args.model), timeout=args.timeout)
        else:
            r = stub.Load(
                pb.LoadRequest(model=args.model, variant=args.variant or ""), timeout=args.timeout
            )
            print(
                f"{args.model} version {r.version} variant {r.variant} "
                f"({r.resident_bytes / 2**20:.1f} MiB)"
            )
            return 0
    print(f"{args.command} {args.model}: done")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import grpc
    import numpy as np

    from edged.adapters.grpc import convert
    from edged.api import inference_pb2 as pb
    from edged.api import inference_pb2_grpc as pb_grpc
    from edged.tensors import DATATYPE_TO_NUMPY, TensorSpec, example_inputs

    with grpc.insecure_channel(address(args)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=args.model, model_version=args.version)
        if args.text is not None:
            arrays: dict[str, Any] = {"text_input": np.array([args.text.encode()], dtype=object)}
            request.parameters["max_tokens"].int64_param = args.max_tokens
        else:
            meta = stub.ModelMetadata(
                pb.ModelMetadataRequest(name=args.model), timeout=args.timeout
            )
            specs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs)
            arrays = example_inputs(specs)
            for item in args.input or []:
                name, _, value = item.partition("=")
                spec = next((s for s in specs if s.name == name), None)
                if spec is None:
                    raise EdgedError(f"--input {name}: the model has no such input")
                arrays[name] = np.asarray(json.loads(value), dtype=DATATYPE_TO_NUMPY[spec.datatype])
        convert.add_inputs(request, arrays)
        response = stub.ModelInfer(request, timeout=args.timeout)
    print(
        f"model {response.model_name} version {response.model_version} "
        f"variant {response.parameters['edged_variant'].string_param}"
    )
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            values = convert.deserialize_bytes(raw, int(np.prod(tensor.shape)), tensor.name)
            print(f"{tensor.name}: {[v.decode(errors='replace') for v in values]}")
        else:
            array = np.frombuffer(raw, DATATYPE_TO_NUMPY[tensor.datatype]).reshape(tensor.shape)
            print(
                f"{tensor.name} {tensor.datatype} {list(tensor.shape)}: "
                f"{np.array2string(array, threshold=20, precision=4)}"
            )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """The gRPC health service's answer: exit 0 when SERVING (an exec probe for Kubernetes, a
    check for scripts), 1 otherwise, saying what it got; with --live, 0 on any answer."""
    import grpc

    from edged.api import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address(args)) as channel:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
                .status
            )
    except grpc.RpcError as e:
        print(f"not serving: {e.code().name}: {e.details()}")
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    # --live: any answer means the process and its loop are alive (starting or draining too).
    return 0 if args.live or status == health_pb2.HealthCheckResponse.SERVING else 1


def register(sub: Any) -> None:
    p = sub.add_parser("health", help="is the daemon serving? (exit 0 if so; for probes)")
    with_client(p)
    p.add_argument("--service", default="", help="a service name (default: the whole server)")
    p.add_argument("--live", action="store_true", help="exit 0 on any answer (liveness)")
    p.set_defaults(fn=cmd_health, timeout=5.0)

    p = sub.add_parser("models", help="models, versions, variants and their state (via daemon)")
    with_client(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_models)

    for name, text in (
        ("pin", "hold a model's variant: never evicted, downgraded or swapped"),
        ("unpin", "let the residency policy manage a model again"),
        ("evict", "unload a model now (it loads again on demand)"),
        ("load", "load a model now, optionally a given variant"),
    ):
        p = sub.add_parser(name, help=text)
        with_client(p)
        p.add_argument("model")
        if name == "load":
            p.add_argument("--variant", help="variant id (default: the policy's choice)")
        p.set_defaults(fn=cmd_portfolio)

    p = sub.add_parser("infer", help="one inference call, for a quick manual check")
    with_client(p)
    p.add_argument("model")
    p.add_argument("--version", default="")
    p.add_argument("--text", help="prompt for a GGUF model")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--input", action="append", help="NAME=JSON array (default: random input)")
    p.set_defaults(fn=cmd_infer)
