"""One operation of the API (`Operation`: the data the router, the validator and
/openapi.json are all built from) and one request to it (`Call`: its body, path and query
values, each validated against the types its operation names).

Route functions are `async def name(relay: RelayContext, call: Call) -> Response`; they ask
`call` for what they need in the order they need it, so the checks (and so the errors a bad
request gets) run in the order each route chose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from imsg_relay.errors import RelayError, bad_request
from imsg_relay.jsonio import dumps

if TYPE_CHECKING:
    from imsg_relay.context import RelayContext

Handler = Callable[["RelayContext", "Call"], Awaitable[Response]]
T = TypeVar("T")


class Param(NamedTuple):
    """A query parameter: its name, its type (a constrained scalar of schema.py), what it
    means, and its value when absent."""

    name: str
    type: Any
    description: str
    default: Any = None


@dataclass(frozen=True)
class Operation:
    """One route: the data the router, the validator and /openapi.json are built from."""

    method: str
    path: str
    handler: Handler
    summary: str
    ok: int
    # a msgspec Struct, or the name of a binary body ("BlobBytes", "ProfileBytes")
    response: Any
    request: Any = None
    auth: bool = True
    errors: tuple[int, ...] = ()
    query: tuple[Param, ...] = ()
    path_params: tuple[tuple[str, Any], ...] = ()
    request_required: bool = True
    # OpenAPI links from the success response: (name, target operationId, parameters).
    links: tuple[tuple[str, str, dict[str, str]], ...] = ()
    # Raw bytes (application/octet-stream) instead of JSON: the request body of a blob part,
    # the response of a blob download (which also answers 206 to a Range).
    binary_request: bool = False
    binary_response: bool = False
    # Request headers a route reads: (name, JSON schema, description).
    headers: tuple[tuple[str, dict[str, Any], str], ...] = ()
    decoder: msgspec.json.Decoder[Any] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.request is not None and not self.binary_request:
            object.__setattr__(self, "decoder", msgspec.json.Decoder(self.request))

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Call:
    request: Request
    op: Operation

    async def body(self, kind: type[T]) -> T:
        """The JSON body, decoded into the operation's request Struct (`kind`, named again
        here so the route is typed; it must be the table's). An optional body that was not
        sent decodes as `{}`."""
        assert kind is self.op.request, f"{self.op.operation_id} takes {self.op.request}, not {kind}"
        raw = await self.request.body()
        if not raw and not self.op.request_required:
            raw = b"{}"
        elif media_type(self.request) != "application/json":
            raise RelayError("unsupported_media_type", "request body must be application/json")
        body: T = decode_body(self.op, raw)
        return body

    def path(self, name: str) -> Any:
        kind = next(t for n, t in self.op.path_params if n == name)
        return _scalar(name, self.request.path_params[name], kind)

    def query(self, name: str) -> Any:
        """The query parameter, validated; its default when absent."""
        param = next(p for p in self.op.query if p.name == name)
        raw = self.request.query_params.get(name)
        if raw is None:
            return param.default
        return _scalar(name, raw, param.type)


def decode_body(op: Operation, raw: bytes) -> Any:
    """Parse a JSON request body straight into the operation's request Struct."""
    assert op.decoder is not None
    try:
        return op.decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise invalid("body", exc) from None
    except msgspec.DecodeError:
        raise bad_request("request body is not valid json") from None


def invalid(where: str, exc: msgspec.ValidationError) -> RelayError:
    """400 naming the field: msgspec's "Expected `int`, got `str` - at `$.messages[0].device_id`"
    becomes "body.messages[0].device_id: expected `int`, got `str`"."""
    text, _, at = str(exc).partition(" - at `$")
    field = where + at.rstrip("`")
    if text.startswith("Expected `str` matching regex"):
        return bad_request(f"{field} is not in the expected format")
    return bad_request(f"{field}: {text[:1].lower()}{text[1:]}")


def _scalar(name: str, raw: str, kind: Any) -> Any:
    """A path or query value as its type: integers are plain decimal digits first."""
    value: Any = raw
    if _is_int(kind):
        # Plain decimal digits only: int() would also take "+1", " 1" and "1_0".
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise bad_request(f"{name} must be a non-negative decimal integer")
        value = int(raw)
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise invalid(name, exc) from None


def _is_int(kind: Any) -> bool:
    return getattr(kind, "__origin__", kind) is int


def json_response(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")
