"""A KServe 0.21 model server around fitted scikit-learn pipelines (run with the kserve environment's Python).

    python kserve_server.py HTTP_PORT GRPC_PORT '{"model-name": "/path/model.joblib", ...}'

Each model is a kserve.Model subclass that reads a V2 request the way KServe's own sklearn server
does (kserve.utils.utils.get_predict_input: the request parameter content_type "pd" gives a
DataFrame of the named columns, else the first tensor as a NumPy array) and answers with
get_predict_response (an output named "output-0"). The HTTP server is bound to 127.0.0.1 (KServe
itself binds every interface).
"""

import json
import sys

import joblib
import kserve
import uvicorn
from kserve.utils.utils import get_predict_input, get_predict_response

_config_init = uvicorn.Config.__init__


def _loopback_config(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_config  # type: ignore[method-assign]


class SklearnPipeline(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):  # type: ignore[no-untyped-def]
        instances = get_predict_input(payload)
        result = self.model.predict(instances)  # type: ignore[union-attr]
        return get_predict_response(payload, result, self.name)


if __name__ == "__main__":
    http_port, grpc_port, spec = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    models = [SklearnPipeline(name, path) for name, path in spec.items()]
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, enable_grpc=False, workers=1).start(models)
