"""Open Inference Protocol (KServe v2) REST bodies, JSON and binary tensor extension.

Shared by the local model server (`serving.modelserver`) and the client
(`serving.model_client`) so both sides agree byte for byte. Only numpy, the
standard library and the project's error root (`vinspect.errors`) are used.

Binary tensor extension (as Triton and OVMS implement it): the body is a JSON header
followed by raw little-endian tensor bytes, in the order the tensors appear in the
header. The header length is sent in `Inference-Header-Content-Length`; each binary
tensor carries `"parameters": {"binary_data_size": N}` instead of `"data"`.
`BYTES` elements are each preceded by a 4-byte little-endian length.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vinspect.errors import VinspectError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

# v2 datatype -> numpy dtype (little-endian, as the extension requires).
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = frozenset([*_DTYPES, "BYTES"])


class V2ProtocolError(VinspectError, ValueError):
    """A request or response body that does not follow the protocol (HTTP 400)."""


@dataclass
class Tensor:
    """One named tensor of a request or response.

    Attributes:
        name: Tensor name as the model declares it.
        datatype: v2 datatype string (`FP32`, `BYTES`, ...).
        shape: Declared shape.
        array: The data; an object array of `bytes` for `BYTES`.
        parameters: The tensor's `parameters` object, passed through.
    """

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    """An entry of the request's `outputs` list."""

    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded inference request."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # True when the request asks for all outputs in binary (`binary_data_output`).
    binary_data_output: bool = False


@dataclass
class InferResponse:
    """A decoded inference response."""

    model_name: str
    model_version: str | None
    id: str | None
    outputs: dict[str, Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)


def numpy_dtype(datatype: str) -> np.dtype:
    """Return the numpy dtype of a v2 datatype.

    Raises:
        V2ProtocolError: For `BYTES` (no fixed-size dtype) or an unknown datatype.
    """
    try:
        return _DTYPES[datatype]
    except KeyError:
        raise V2ProtocolError(f"unsupported datatype {datatype!r}; expected one of {sorted(DATATYPES)}") from None


def datatype_of(array: np.ndarray) -> str:
    """Return the v2 datatype that matches a numpy array's dtype."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dt in _DTYPES.items():
        if array.dtype == dt or array.dtype.newbyteorder("<") == dt:
            return name
    raise V2ProtocolError(f"numpy dtype {array.dtype} has no v2 datatype")


def _element_count(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise V2ProtocolError(f"tensor {name!r}: 'shape' must be a list of non-negative integers")
    return shape


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _deserialize_bytes(raw: memoryview | bytes, name: str) -> list[bytes]:
    items = []
    offset = 0
    raw = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise V2ProtocolError(f"tensor {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise V2ProtocolError(f"tensor {name!r}: BYTES element runs past the tensor data")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items


def tensor_to_raw(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The binary extension's raw layout of an array.

    Numeric tensors come back as a byte view of the (contiguous) array, not a copy: an HTTP
    client writes it out as is. BYTES tensors are serialized (length-prefixed elements).
    """
    if datatype == "BYTES":
        return _serialize_bytes(array)
    return memoryview(np.ascontiguousarray(array, dtype=numpy_dtype(datatype)).reshape(-1)).cast("B")


def _tensor_from_raw(name: str, datatype: str, shape: list[int], raw: memoryview) -> np.ndarray:
    if datatype == "BYTES":
        items = _deserialize_bytes(raw, name)
        if len(items) != _element_count(shape):
            raise V2ProtocolError(f"tensor {name!r}: {len(items)} BYTES elements for shape {shape}")
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = _element_count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise V2ProtocolError(
            f"tensor {name!r}: binary data is {len(raw)} bytes, shape {shape} of {datatype} needs {expected}"
        )
    # frombuffer keeps a view on the body: no copy of large image tensors.
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _tensor_from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1)
        items = [x.encode("utf-8") if isinstance(x, str) else x for x in flat]
        if not all(isinstance(x, bytes) for x in items):
            raise V2ProtocolError(f"tensor {name!r}: BYTES data must be strings")
        out = np.empty(len(items), dtype=object)
        out[:] = items
    else:
        try:
            out = np.asarray(data, dtype=numpy_dtype(datatype)).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise V2ProtocolError(f"tensor {name!r}: 'data' is not {datatype}: {exc}") from None
    if out.size != _element_count(shape):
        raise V2ProtocolError(
            f"tensor {name!r}: 'data' has {out.size} elements, shape {shape} needs {_element_count(shape)}"
        )
    return out.reshape(shape)


def _split_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is None:
        header_bytes, rest = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise V2ProtocolError(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
        view = memoryview(body)
        header_bytes, rest = bytes(view[:header_length]), view[header_length:]
    return json_object(header_bytes, "body"), rest


def json_object(data: bytes, what: str, like: str | None = None) -> dict[str, Any]:
    """Parse a protocol body that must be one JSON object (inference header, repository request).

    The one guard for JSON the server is sent: bytes that are not UTF-8 JSON, JSON nested
    deeply enough to exhaust the parser's recursion (a request is three levels deep; thousands
    of nested arrays are an attack, not a tensor), and JSON that is not an object are each
    refused with a message naming ``what``.

    Args:
        data: The raw bytes.
        what: What the message calls them (``body``, ``load request``).
        like: An example object the message shows when ``data`` is valid JSON but not an object.

    Raises:
        V2ProtocolError: For each of the cases above.
    """
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise V2ProtocolError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise V2ProtocolError(f"{what} is not valid JSON: nested too deeply") from None
    if not isinstance(parsed, dict):
        example = f" like {like}" if like else ""
        raise V2ProtocolError(f"{what} must be a JSON object{example}, not {type(parsed).__name__}")
    return parsed


def _read_tensors(entries: Any, rest: memoryview, offset: int, what: str) -> tuple[list[Tensor], int]:
    if not isinstance(entries, list):
        raise V2ProtocolError(f"'{what}' must be a list")
    tensors = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise V2ProtocolError(f"each of '{what}' needs a string 'name'")
        name = entry["name"]
        datatype = entry.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise V2ProtocolError(f"tensor {name!r}: datatype {datatype!r} is not one of {sorted(DATATYPES)}")
        shape = _check_shape(name, entry.get("shape"))
        params = entry.get("parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise V2ProtocolError(f"tensor {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(rest):
                raise V2ProtocolError(
                    f"tensor {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(rest) - offset} bytes left in the body"
                )
            array = _tensor_from_raw(name, datatype, shape, rest[offset : offset + size])
            offset += size
        elif "data" in entry:
            array = _tensor_from_json(name, datatype, shape, entry["data"])
        else:
            raise V2ProtocolError(f"tensor {name!r}: neither 'data' nor binary_data_size")
        tensors.append(Tensor(name, datatype, shape, array, params))
    return tensors, offset


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body.

    Args:
        body: The whole HTTP body.
        header_length: Value of `Inference-Header-Content-Length`, or None for pure JSON.

    Returns:
        The decoded request; binary tensors are zero-copy views on `body`.

    Raises:
        V2ProtocolError: For any malformed part, naming the tensor.
    """
    header, rest = _split_body(body, header_length)
    if "inputs" not in header:
        raise V2ProtocolError("request has no 'inputs'")
    inputs, offset = _read_tensors(header["inputs"], rest, 0, "inputs")
    if offset != len(rest):
        raise V2ProtocolError(f"{len(rest) - offset} bytes of binary data are not claimed by any input")
    params = header.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise V2ProtocolError("request 'parameters' must be an object")
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise V2ProtocolError("'outputs' must be a list")
        outputs = []
        for entry in header["outputs"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise V2ProtocolError("each of 'outputs' needs a string 'name'")
            oparams = entry.get("parameters")
            oparams = {} if oparams is None else oparams
            if not isinstance(oparams, dict):
                raise V2ProtocolError(f"output {entry['name']!r}: 'parameters' must be an object")
            outputs.append(RequestedOutput(entry["name"], bool(oparams.get("binary_data"))))
    request_id = header.get("id")
    return InferRequest(
        inputs=inputs,
        outputs=outputs,
        id=str(request_id) if request_id is not None else None,
        parameters=params,
        binary_data_output=bool(params.get("binary_data_output")),
    )


def _assemble_parts(header: dict[str, Any], chunks: list[Any]) -> tuple[list[Any], dict[str, str]]:
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return [head], {"Content-Type": JSON_CONTENT_TYPE, "Content-Length": str(len(head))}
    return [head, *chunks], {
        "Content-Type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(head)),
        "Content-Length": str(len(head) + sum(memoryview(c).nbytes for c in chunks)),
    }


def _assemble(header: dict[str, Any], chunks: list[Any]) -> tuple[bytes, dict[str, str]]:
    parts, headers = _assemble_parts(header, chunks)
    headers.pop("Content-Length")  # HTTP clients set it for a bytes body
    return b"".join(parts), headers


def _tensor_entry(
    name: str, array: np.ndarray, binary: bool, chunks: list[bytes], datatype: str | None = None
) -> dict[str, Any]:
    datatype = datatype or datatype_of(array)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        raw = tensor_to_raw(array, datatype)
        entry["parameters"] = {"binary_data_size": memoryview(raw).nbytes}
        chunks.append(raw)
    elif datatype == "BYTES":
        entry["data"] = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    else:
        entry["data"] = array.reshape(-1).tolist()
    return entry


def encode_request(
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    *,
    binary_inputs: bool = True,
    binary_outputs: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference request as one body (see :func:`encode_request_parts`).

    Returns:
        (body, headers) ready to POST to `.../infer`.
    """
    parts, headers = encode_request_parts(
        inputs,
        outputs,
        binary_inputs=binary_inputs,
        binary_outputs=binary_outputs,
        request_id=request_id,
    )
    headers.pop("Content-Length")  # HTTP clients set it for a bytes body
    return b"".join(parts), headers


def encode_request_parts(
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    *,
    binary_inputs: bool = True,
    binary_outputs: bool = True,
    request_id: str | None = None,
) -> tuple[list[Any], dict[str, str]]:
    """Encode an inference request as body parts: the JSON header, then each raw tensor.

    The tensors are views on the arrays (no copy of a multi-megabyte image tensor); send the
    parts in order with the returned ``Content-Length``. The list can be sent again (retries).

    Args:
        inputs: Input name -> array.
        outputs: Output names to request; None requests all.
        binary_inputs: Send tensors as raw bytes after the JSON header.
        binary_outputs: Ask for outputs as raw bytes.
        request_id: Optional request id, echoed by the server.

    Returns:
        (parts, headers) ready to POST to `.../infer`.
    """
    chunks: list[Any] = []
    header: dict[str, Any] = {"inputs": [_tensor_entry(n, a, binary_inputs, chunks) for n, a in inputs.items()]}
    if request_id is not None:
        header["id"] = request_id
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    elif binary_outputs:
        header["parameters"] = {"binary_data_output": True}
    return _assemble_parts(header, chunks)


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference response.

    Args:
        model_name: Name of the model that answered.
        model_version: Its version.
        request_id: The request's id, echoed (empty string when it had none, like Triton).
        outputs: (name, array, binary) for each output to return, in order.

    Returns:
        (body, headers) for the HTTP response.
    """
    chunks: list[bytes] = []
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    header["id"] = request_id if request_id is not None else ""
    header["outputs"] = [_tensor_entry(n, a, b, chunks) for n, a, b in outputs]
    return _assemble(header, chunks)


def decode_response(body: bytes, header_length: int | None = None) -> InferResponse:
    """Decode an inference response body (JSON or binary extension).

    Raises:
        V2ProtocolError: When the body is malformed.
    """
    header, rest = _split_body(body, header_length)
    if "error" in header:
        raise V2ProtocolError(f"server error: {header['error']}")
    tensors, _ = _read_tensors(header.get("outputs", []), rest, 0, "outputs")
    version = header.get("model_version")
    return InferResponse(
        model_name=str(header.get("model_name", "")),
        model_version=str(version) if version is not None else None,
        id=header.get("id"),
        outputs={t.name: t for t in tensors},
        parameters=header.get("parameters") or {},
    )
