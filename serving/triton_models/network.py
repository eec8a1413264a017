"""maskrt network on ONNX Runtime (Triton python backend), for a Triton without the onnxruntime backend. Written by
`maskrt triton --network python`; the logic is maskrt.serving.steps.NetworkStep."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from maskrt.serving.steps import NetworkStep


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config["parameters"]
        threads = int(params["threads"]["string_value"]) or None
        self.step = NetworkStep(Path(args["model_repository"]) / args["model_version"],
                                params["graph"]["string_value"], threads)
        self.inputs = [i["name"] for i in config["input"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images, sizes = (pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs)
                out = self.step(images, sizes)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, value) for name, value in out.items()]))
            except Exception as exc:  # noqa: BLE001
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
