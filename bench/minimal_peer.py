"""The least a Python model server can do for bench/faults.py's traffic: the bound edged's
bystander figures are read against.

One process, like edged: grpc.aio on uvloop, onnxruntime for the tiny model run inline on the
event loop, llama-cpp-python for generation on worker threads (two contexts, as the demo's
tinyllama has). No housekeeping at all: no parsing of a request it will refuse (anything over
1 MiB is refused from its length), no memory accounting, no metrics, no learning, no history;
an unload closes the contexts and a load opens them again. What it costs a bystander here is
what sharing one interpreter with that traffic costs, whatever the server does.

    .venv/bin/python bench/minimal_peer.py SOCKET MODEL.onnx MODEL.gguf
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import uvloop
from llama_cpp import Llama
from tritonclient.grpc import service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
LARGE = 1 << 20
CONTEXTS = 2


class Peer:
    def __init__(self, onnx_path: str, gguf_path: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.gguf_path = gguf_path
        self.free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._open()

    def _open(self) -> None:
        for _ in range(CONTEXTS):
            self.free.put(Llama(model_path=self.gguf_path, n_ctx=256, n_threads=1, verbose=False))

    async def infer(self, body: bytes, context: Any) -> bytes:
        if len(body) > LARGE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "too large")
        request = pb.ModelInferRequest.FromString(body)
        if request.model_name == "mlp":
            x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(1, 64)
            (y,) = self.session.run(None, {"input": x})[:1]
            response = pb.ModelInferResponse(model_name="mlp", model_version="1")
            response.outputs.add(name="logits", datatype="FP32", shape=list(y.shape))
            response.raw_output_contents.append(y.tobytes())
            return response.SerializeToString()
        text = "".join([chunk async for chunk in self._generate(request)])
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
        data = text.encode()
        response.raw_output_contents.append(len(data).to_bytes(4, "little") + data)
        return response.SerializeToString()

    async def stream(self, requests: Any, context: Any) -> Any:
        async for body in requests:
            request = pb.ModelInferRequest.FromString(body)
            async for chunk in self._generate(request):
                response = pb.ModelStreamInferResponse()
                response.infer_response.model_name = request.model_name
                out = response.infer_response.outputs.add(
                    name="text_output", datatype="BYTES", shape=[1]
                )
                out.contents.bytes_contents.append(chunk.encode())
                yield response.SerializeToString()

    async def _generate(self, request: Any) -> Any:
        prompt = request.inputs[0].contents.bytes_contents[0]
        if len(prompt) > 64 << 10:
            raise ValueError("prompt too long")
        tokens = request.parameters["max_tokens"].int64_param or 16
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            llm = self.free.get()
            try:
                for part in llm.create_completion(
                    prompt.decode(), max_tokens=tokens, temperature=0.0, stream=True
                ):
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(chunks.put_nowait, part["choices"][0]["text"])
            finally:
                self.free.put(llm)
                loop.call_soon_threadsafe(chunks.put_nowait, None)

        future = loop.run_in_executor(None, work)
        try:
            while (chunk := await chunks.get()) is not None:
                yield chunk
        finally:
            stop.set()
            await asyncio.shield(future)

    async def unload(self, body: bytes, context: Any) -> bytes:
        def close() -> None:
            for _ in range(CONTEXTS):
                self.free.get().close()

        await asyncio.to_thread(close)
        return pb.RepositoryModelUnloadResponse().SerializeToString()

    async def load(self, body: bytes, context: Any) -> bytes:
        await asyncio.to_thread(self._open)
        return pb.RepositoryModelLoadResponse().SerializeToString()


async def serve(socket: str, onnx_path: str, gguf_path: str) -> None:
    peer = Peer(onnx_path, gguf_path)
    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(peer.infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(peer.stream),
        "RepositoryModelUnload": grpc.unary_unary_rpc_method_handler(peer.unload),
        "RepositoryModelLoad": grpc.unary_unary_rpc_method_handler(peer.load),
    }
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(*sys.argv[1:4]))
