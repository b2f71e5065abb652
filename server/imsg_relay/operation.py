"""One operation of the API (`Operation`: the data the router, the validator and
/openapi.json are all built from) and one request to it (`Call`: its body, path and query
values, each validated against the specs of its operation).

Route functions are `async def name(relay: RelayContext, call: Call) -> Response`; they ask
`call` for what they need in the order they need it, so the checks (and so the errors a bad
request gets) run in the order each route chose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from imsg_relay import schema
from imsg_relay.errors import RelayError, bad_request
from imsg_relay.jsonio import dumps, loads

if TYPE_CHECKING:
    from imsg_relay.context import RelayContext

Handler = Callable[["RelayContext", "Call"], Awaitable[Response]]
ParamSpec = tuple[str, dict[str, Any]]
DescribedSpec = tuple[str, dict[str, Any], str]


@dataclass(frozen=True)
class Operation:
    """One route: the data both the router and /openapi.json are built from."""

    method: str
    path: str
    handler: Handler
    summary: str
    ok: int
    response: str
    request: str | None = None
    auth: bool = True
    errors: tuple[int, ...] = ()
    # (name, schema, description); the schema's "default" is the value when it is absent
    query: tuple[DescribedSpec, ...] = ()
    path_params: tuple[ParamSpec, ...] = ()
    request_required: bool = True
    # OpenAPI links from the success response: (name, target operationId, parameters).
    links: tuple[tuple[str, str, dict[str, str]], ...] = ()
    # Raw bytes (application/octet-stream) instead of JSON: the request body of a blob part,
    # the response of a blob download (which also answers 206 to a Range).
    binary_request: bool = False
    binary_response: bool = False
    # Request headers a route reads: (name, schema, description).
    headers: tuple[DescribedSpec, ...] = ()

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Call:
    request: Request
    op: Operation

    async def body(self) -> dict[str, Any]:
        """The JSON body, validated against the operation's request schema ({} when the
        operation's body is optional and none was sent)."""
        assert self.op.request is not None and not self.op.binary_request
        raw = await self.request.body()
        if not raw and not self.op.request_required:
            return {}
        if media_type(self.request) != "application/json":
            raise RelayError("unsupported_media_type", "request body must be application/json")
        return decode_body(self.op, raw)

    def path(self, name: str) -> Any:
        spec = _spec(self.op.path_params, name)
        raw = self.request.path_params[name]
        return schema.validate(spec, _int(raw, name) if spec["type"] == "integer" else raw, name)

    def query(self, name: str) -> Any:
        """The query parameter, validated; its schema's default (None if it has none) when absent."""
        spec = next(s for n, s, _ in self.op.query if n == name)
        raw = self.request.query_params.get(name)
        if raw is None:
            return spec.get("default")
        return schema.validate(spec, _int(raw, name) if spec["type"] == "integer" else raw, name)


def decode_body(op: Operation, raw: bytes) -> dict[str, Any]:
    """Parse a JSON request body and validate it against the operation's request schema."""
    assert op.request is not None
    try:
        data = loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid json") from None
    out: dict[str, Any] = schema.validate(schema.S[op.request], data)
    return out


def json_response(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")


def _spec(specs: tuple[ParamSpec, ...], name: str) -> dict[str, Any]:
    return next(s for n, s in specs if n == name)


def _int(raw: str, name: str) -> int:
    # Plain decimal digits only: int() would also take "+1", " 1" and "1_0".
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise bad_request(f"{name} must be a non-negative decimal integer")
    return int(raw)
