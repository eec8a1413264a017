"""maskrt pre-processing (Triton python backend): encoded images -> the network's inputs. Written by `maskrt triton`;
the logic is maskrt.serving.steps.PreStep, so the Python that runs this model needs maskrt installed."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from maskrt.core.artifacts import ExportInfo
from maskrt.serving.protocol import INPUT
from maskrt.serving.steps import PreStep


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        max_pixels = int(config["parameters"]["max_pixels"]["string_value"])
        self.step = PreStep(ExportInfo.read(folder), max_pixels)
        # each output in the type its config declares (the network's input types)
        self.outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}

    def execute(self, requests):
        responses = []
        for request in requests:  # each request answered alone: a bad image fails only its own request
            try:
                out = self.step(pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy())
                tensors = [pb_utils.Tensor(name, out[name].astype(dtype, copy=False))
                           for name, dtype in self.outputs.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - the client gets the message
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
