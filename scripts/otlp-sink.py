#!/usr/bin/env python3
"""A local OTLP/gRPC trace receiver that counts what it gets: a collector stand-in for trying
Zen's tracing and for `zen bench webhooks` with tracing on (docs/OBSERVABILITY.md).

    python3 scripts/otlp-sink.py --port 4317        # needs grpcio and opentelemetry-proto

It prints the spans and export requests received every 5 seconds and at exit (Ctrl-C).
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.spans = 0
        self.requests = 0

    def Export(self, request, context):  # noqa: N802 (the OTLP method name)
        count = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        with self.lock:
            self.spans += count
            self.requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4317)
    args = parser.parse_args()
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"OTLP/gRPC sink on 127.0.0.1:{args.port}", flush=True)
    try:
        while True:
            time.sleep(5)
            print(f"{sink.spans} spans in {sink.requests} export requests", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(0)
        print(f"{sink.spans} spans in {sink.requests} export requests", flush=True)


if __name__ == "__main__":
    main()
