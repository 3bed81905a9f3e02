"""The Open Inference Protocol (v2 REST) facts our conformance tests rely on, as JSON Schemas we
wrote ourselves (test data, not a copy of the specification).

Sources, read for these facts:
- kserve/open-inference-protocol, specification/protocol/open_inference_rest.yaml (OpenAPI
  "Data Plane", info.version 2.0; commit 18d5991e9e45d291f53103cc79e13ecc6212ffae) and
  specification/protocol/inference_rest.md: which members each response object must carry, their
  JSON types, that ``parameters`` is an object when present, that shapes are integer lists and
  that errors are objects with a string ``error``.
- The binary tensor data extension (triton-inference-server/server docs/protocol/
  extension_binary_data.md; implemented by kserve 0.21 ``kserve.protocol.infer_type``): an output
  sent as binary carries ``parameters.binary_data_size`` (a non-negative integer) instead of
  ``data``; the JSON header's length is in the ``Inference-Header-Content-Length`` response header.

Stricter than the spec where our server promises more: no ``null`` anywhere (the spec's
``parameters`` is an object, and optional members are absent, not null), metadata ``versions`` is
present, ``platform`` and every tensor's ``datatype`` are non-empty and tensor shapes are
non-empty lists with -1 only for variable dimensions.
"""

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]

_PARAMETERS = {"type": "object"}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}
_TENSOR_DATA = {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/tensor_data"}, {"type": "number"},
                                                     {"type": "string"}, {"type": "boolean"}]}}

_DEFS = {
    "parameters": _PARAMETERS,
    "tensor_data": _TENSOR_DATA,
    "metadata_tensor": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {"name": {"type": "string", "minLength": 1}, "datatype": {"enum": DATATYPES},
                       "shape": {**_SHAPE, "minItems": 1}},
    },
    "response_output_json": {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {"name": {"type": "string"}, "shape": _SHAPE, "datatype": {"enum": DATATYPES},
                       "parameters": {"$ref": "#/$defs/parameters"}, "data": {"$ref": "#/$defs/tensor_data"}},
    },
    "response_output_binary": {
        "type": "object",
        "required": ["name", "shape", "datatype", "parameters"],
        "not": {"required": ["data"]},
        "properties": {"name": {"type": "string"}, "shape": _SHAPE, "datatype": {"enum": DATATYPES},
                       "parameters": {"type": "object", "required": ["binary_data_size"],
                                      "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}},
    },
}

SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                   "extensions": {"type": "array", "items": {"type": "string"}}},
}

MODEL_METADATA = {
    "$defs": _DEFS,
    "type": "object",
    "required": ["name", "platform", "versions", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "platform": {"type": "string", "minLength": 1},
        "inputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}, "minItems": 1},
        "outputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}, "minItems": 1},
    },
}

INFERENCE_RESPONSE = {
    "$defs": _DEFS,
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"$ref": "#/$defs/parameters"},
        "outputs": {"type": "array", "items": {"oneOf": [{"$ref": "#/$defs/response_output_json"},
                                                         {"$ref": "#/$defs/response_output_binary"}]}},
    },
}

MODEL_READY = {"type": "object", "required": ["name", "ready"],
               "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}}

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def no_nulls(doc, where: str = "$") -> list[str]:
    """Paths of ``null`` values in a JSON document (the spec has no nullable member)."""
    if doc is None:
        return [where]
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in no_nulls(v, f"{where}.{k}")]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in no_nulls(v, f"{where}[{i}]")]
    return []


def validate(doc, schema: dict) -> None:
    """Raise jsonschema.ValidationError (or AssertionError for a null) when `doc` breaks `schema`."""
    import jsonschema

    jsonschema.Draft202012Validator(schema).validate(doc)
    nulls = no_nulls(doc)
    assert not nulls, f"null values at {nulls}"
