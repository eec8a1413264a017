"""maskrt post-processing (Triton python backend): the network's outputs -> COCO results JSON per image. Written by
`maskrt triton`; the logic is maskrt.serving.steps.PostStep (the Python that runs this model needs maskrt)."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from maskrt.core.artifacts import OUTPUT_NAMES, ExportInfo
from maskrt.serving.protocol import OUTPUT
from maskrt.serving.steps import ORIGINAL_SIZES, PostStep


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        info = ExportInfo.read(folder)
        threshold = float(config["parameters"]["score_threshold"]["string_value"])
        self.step = PostStep(info, threshold)
        self.sizes = info.input.names[1]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                get = lambda name, r=request: pb_utils.get_input_tensor_by_name(r, name).as_numpy()  # noqa: E731
                out = self.step({name: get(name) for name in OUTPUT_NAMES}, get(self.sizes), get(ORIGINAL_SIZES))
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, out)]))
            except Exception as exc:  # noqa: BLE001
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
