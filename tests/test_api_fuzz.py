"""Malformed and random requests, built from the daemon's own OpenAPI document, against a real
daemon on a real socket: none gets a 5xx, every error is the JSON error shape, and the daemon
still answers at the end.

Hypothesis runs in a worker thread with a blocking HTTP client, so the daemon keeps serving
on the test's event loop. Submitted folders are mostly missing or invalid; a valid submit
that slips through is a short task the daemon fixture stops.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from conftest import wait_terminal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlmaster_daemon.api.access import Peer
from mlmaster_daemon.api.app import ApiParts, build_app
from mlmaster_daemon.api.client import Client
from mlmaster_daemon.api.folders import Placement, check_task_folder
from mlmaster_daemon.api.schemas import SubmitRequest
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import Forbidden, InvalidTaskDir

MAX_BODY = 64 * 1024
# Methods aiohttp's HTTP parser (llhttp) knows; CONNECT is left out (its target is host:port).
# Any other token is refused by the parser itself, before the app, with a plain-text 400.
HTTP_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "COPY",
                "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "REPORT",
                "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE",
                "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK", "UNLINK", "QUERY"]
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FUZZ_SETTINGS = settings(deadline=None, database=None, print_blob=True,
                         suppress_health_check=list(HealthCheck))


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


def send(socket_path: Path, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    """One request, sent as given on a fresh connection. Of an event stream only the first
    line is read."""
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(socket_path))
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading it all (a 413, a bad request line)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        content_type = resp.getheader("Content-Type", "")
        if content_type.startswith("application/x-ndjson"):
            data = resp.readline()
        else:
            data = resp.read()
        return Reply(resp.status, content_type, data)


@dataclass
class Tally:
    """What the fuzzer saw: every status, and the problems found."""

    statuses: dict[int, int] = field(default_factory=dict)

    def check(self, method: str, target: str, reply: Reply) -> None:
        self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        where = f"{method} {target[:200]} -> {reply.status}: {reply.body[:300]!r}"
        assert reply.status < 500, where
        if method not in HTTP_METHODS:
            assert reply.status in (400, 405, 501), where  # refused by the parser, or the app
            return
        if method == "HEAD":
            return
        if reply.status >= 400:
            assert reply.content_type.startswith("application/json"), where
            payload = json.loads(reply.body)
            assert set(payload) == {"error"}, where
            assert set(payload["error"]) == {"code", "message"}, where
            assert isinstance(payload["error"]["code"], str), where
            assert isinstance(payload["error"]["message"], str), where
            assert payload["error"]["message"], where
        elif reply.content_type.startswith("application/json"):
            json.loads(reply.body)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


# --- strategies, from the published document ---------------------------------------------------

TRAVERSALS = ["..", "../..", "../../etc/passwd", "..%2f..%2fetc", "%2e%2e", "./.", "/", "//",
              "\\..\\..", "t00000000000/../..", "%00", "\x00", "t0000000000g", "T00000000000",
              "t000000000000", "t" + "0" * 10, "", " ", "🦄", "١٢٣", "9" * 40, "-1", "1e9",
              "0x10", "NaN", "null", "${task_id}", "{task_id}"]

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=50))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)


def param_values(schema: dict[str, Any], known: list[str]) -> st.SearchStrategy[str]:
    """Values for a path or query parameter with `schema`: well-formed ones (from its
    pattern), ids that exist, and junk of every kind."""
    options: list[st.SearchStrategy[str]] = [
        st.sampled_from(TRAVERSALS),
        st.text(max_size=60),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
    ]
    if "pattern" in schema:
        options.append(st.from_regex(schema["pattern"], fullmatch=True))
    if known:
        options.append(st.sampled_from(known))
    return st.one_of(options)


def encode_segment(value: str, raw: bool) -> str:
    """`value` as a path segment: fully escaped, or with '/', '.' and '%' left raw so
    traversal reaches the server as such."""
    return quote(value, safe="/.%" if raw else "", errors="surrogateescape")


def task_dirs(state_dir: Path) -> st.SearchStrategy[str]:
    """task_dir strings that never name a loadable competition."""
    missing = st.text(min_size=1, max_size=40).map(lambda s: "/nonexistent-mlm/" + s)
    special = st.sampled_from([
        "/", "/etc", "/etc/passwd", "/proc/self", "/proc/self/root", "/dev/null", "/dev/zero",
        "/tmp", "/../../../../etc", "relative/dir", "~", "~root", ".", "", "/\x00/x",
        "/x\ud800", str(state_dir), str(state_dir / "tasks"), str(state_dir / "mlmaster.db"),
        str(state_dir / ".." / "state"), str(state_dir / "tasks" / ".."), "/" + "a" * 5000,
        "/" + "a/" * 2000,
    ])
    return st.one_of(missing, special, st.text(max_size=80))


def in_bounds(name: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the field's schema allows (policies the daemon knows, for `policy`)."""
    if name == "policy":
        return st.sampled_from(["mcts", "greedy", "evolutionary"])
    options: list[st.SearchStrategy[Any]] = []
    for part in schema.get("anyOf", [schema]):
        kind = part.get("type")
        if kind == "integer":
            options.append(st.integers(part.get("minimum"), part.get("maximum")))
        elif kind == "number":
            low = part.get("minimum", part.get("exclusiveMinimum"))
            options.append(st.floats(low, part.get("maximum"), allow_nan=False,
                                     exclude_min="exclusiveMinimum" in part))
        elif kind == "string":
            options.append(st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                                   min_size=part.get("minLength", 0),
                                   max_size=min(part.get("maxLength", 100), 100)))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
    return st.one_of(options)


def out_of_bounds(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Wrong-typed values for a field, and right-typed ones at and past its bounds."""
    types = {part.get("type") for part in schema.get("anyOf", [schema])}
    options: list[st.SearchStrategy[Any]] = [json_values]
    if "integer" in types:
        options.append(st.integers(min_value=-(2**70), max_value=2**70))
        options.append(st.sampled_from([0, 1, 100_000, 100_001, 10**12, 10**12 + 1, 2**63]))
    if "number" in types:
        options.append(st.floats())
        options.append(st.sampled_from([0.0, -0.0, 1e-300, 1e300, 2.5, 30 * 86400 + 0.5]))
    if "string" in types:
        options.append(st.text(max_size=300))
        options.append(st.sampled_from(["", " ", "\x00", "\ud800", "x" * 5000]))
    return st.one_of(options)


@st.composite
def submit_bodies(draw: st.DrawFn, submit_schema: dict[str, Any],
                  state_dir: Path) -> dict[str, Any]:
    """Submit bodies: clean ones (every field in bounds, so the folder checks and load_task
    are reached), mixed ones, and junk objects."""
    mode = draw(st.sampled_from(["clean", "clean", "mixed", "junk"]))
    if mode == "junk":
        junk: dict[str, Any] = draw(st.dictionaries(st.text(max_size=12), json_values,
                                                    max_size=4))
        return junk
    body: dict[str, Any] = {
        "task_dir": draw(task_dirs(state_dir) if mode == "clean" else
                         task_dirs(state_dir) | json_values)}
    for name, schema in submit_schema["properties"].items():
        if name == "task_dir" or not draw(st.booleans()):
            continue
        clean = mode == "clean" or draw(st.booleans())
        body[name] = draw(in_bounds(name, schema) if clean else out_of_bounds(schema))
    if mode == "mixed" and draw(st.booleans()):
        body.update(draw(st.dictionaries(st.text(max_size=12), json_values, max_size=2)))
    return body


def raw_bodies(json_bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes | None]:
    """Bodies as bytes: JSON, not JSON, nested past any parser's patience, or too big."""
    return st.one_of(
        st.none(),
        json_bodies.map(lambda v: json.dumps(v).encode()),
        json_bodies.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "replace")),
        st.binary(max_size=300),
        st.sampled_from(range(len(ODD_BODIES))).map(ODD_BODIES.__getitem__),
    )


ODD_BODIES = [
    b"", b"{", b"[]", b"null", b'{"task_dir": NaN}', b"\xff\xfe{}",
    b'{"task_dir": "/x", "task_dir": 1}', b"[" * 100_000, b"[" * 50_000 + b"]" * 50_000,
    b'{"a":' * 20_000, b" " * (MAX_BODY + 1), b'{"task_dir": "' + b"a" * MAX_BODY + b'"}',
    "\"\ud800\"".encode("utf-8", "surrogatepass"),
]


content_types = st.sampled_from([
    None, "application/json", "application/json; charset=utf-8",
    "application/json; charset=no-such-charset", "application/json; charset=utf-16",
    "text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
])
query_strings = st.one_of(
    st.just(""),
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3).map(
        lambda q: "?" + urlencode(q, errors="surrogateescape")),
    st.text(alphabet="&=?%;+#/abc\\", max_size=20).map(lambda s: "?" + quote(s, safe="&=%;+/")),
)


@dataclass(frozen=True)
class Route:
    template: str
    method: str
    path_params: dict[str, dict[str, Any]]
    query_params: dict[str, dict[str, Any]]


def routes_of(spec: dict[str, Any]) -> list[Route]:
    routes = []
    for template, item in spec["paths"].items():
        for method, operation in item.items():
            params = operation.get("parameters", [])
            routes.append(Route(
                template, method.upper(),
                {p["name"]: p["schema"] for p in params if p["in"] == "path"},
                {p["name"]: p["schema"] for p in params if p["in"] == "query"}))
    return routes


@st.composite
def requests(draw: st.DrawFn, spec: dict[str, Any], known_ids: list[str],
             state_dir: Path) -> tuple[str, str, bytes | None, dict[str, str]]:
    """(method, target, body, headers): a route of the document with its parameters, method,
    query and body each either right or wrong."""
    route = draw(st.sampled_from(routes_of(spec)))
    raw = draw(st.booleans())
    path = route.template
    for name, schema in route.path_params.items():
        path = path.replace("{" + name + "}",
                            encode_segment(draw(param_values(schema, known_ids)), raw))
    query = draw(query_strings)
    for name, schema in route.query_params.items():
        if draw(st.booleans()):
            value = draw(param_values(schema, known_ids))
            sep = "&" if query else "?"
            query += f"{sep}{name}={quote(value, safe='', errors='surrogateescape')}"
    method = draw(st.one_of(st.just(route.method), st.sampled_from(HTTP_METHODS),
                            st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)))
    submit = spec["components"]["schemas"]["SubmitRequest"]
    body = draw(raw_bodies(submit_bodies(submit, state_dir) | json_values))
    headers = {}
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return method, path + query, body, headers


# --- the tests ---------------------------------------------------------------------------------

def fetch_spec(socket_path: Path) -> dict[str, Any]:
    reply = send(socket_path, "GET", "/v1/openapi.json")
    assert reply.status == 200
    spec: dict[str, Any] = json.loads(reply.body)
    return spec


async def test_random_requests_from_the_spec_never_get_a_5xx(
    daemon: Daemon, client: Client, breast_cancer: Path
) -> None:
    # One real, short task, so some ids and node ids exist.
    real = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
    await wait_terminal(client, real["id"])
    spec = await asyncio.to_thread(fetch_spec, daemon.socket_path)
    assert set(await client.task(real["id"])) == set(
        spec["components"]["schemas"]["Task"]["properties"])
    tally = Tally()
    sock, state_dir = daemon.socket_path, daemon.state_dir

    @settings(FUZZ_SETTINGS, max_examples=1500)
    @given(requests(spec, [real["id"]], state_dir))
    def any_request(request: tuple[str, str, bytes | None, dict[str, str]]) -> None:
        method, target, body, headers = request
        tally.check(method, target, send(sock, method, target, body, headers))

    await asyncio.to_thread(any_request)
    assert tally.total >= 1500
    assert (await client.health())["status"] == "ok"
    # The fuzzer reached past validation too, not only 400s.
    assert {200, 400, 404, 405} <= set(tally.statuses)


async def test_random_submissions_are_refused_cleanly(daemon: Daemon, client: Client) -> None:
    spec = await asyncio.to_thread(fetch_spec, daemon.socket_path)
    submit = spec["components"]["schemas"]["SubmitRequest"]
    tally = Tally()
    sock = daemon.socket_path

    @settings(FUZZ_SETTINGS, max_examples=1200)
    @given(submit_bodies(submit, daemon.state_dir), content_types)
    def any_submit(body: dict[str, Any], content_type: str | None) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        data = json.dumps(body).encode("utf-8", "surrogatepass")
        tally.check("POST", "/v1/tasks", send(sock, "POST", "/v1/tasks", data, headers))

    await asyncio.to_thread(any_submit)
    assert tally.total >= 1200
    assert set(tally.statuses) <= {201, 400, 403, 413}
    assert tally.statuses.get(403, 0) > 0  # the state dir was refused at least once
    assert (await client.health())["status"] == "ok"


# --- the document itself, and examples the fuzzer should not have to find -----------------------

async def test_the_document_lists_exactly_the_routes_the_app_serves(
    daemon: Daemon, client: Client
) -> None:
    spec = await client.request("GET", "/v1/openapi.json")
    assert spec["openapi"].startswith("3.1")
    assert daemon.store is not None and daemon.queue is not None
    app = build_app(ApiParts(daemon.store, daemon.bus, daemon.queue, daemon.settings,
                             daemon.state_dir, 0.0))
    served = {(r.resource.canonical, r.method)
              for r in app.router.routes() if r.resource is not None}
    documented = {(route.template, route.method) for route in routes_of(spec)}
    assert served == documented


async def test_the_document_describes_ids_bodies_and_errors(client: Client) -> None:
    spec = await client.request("GET", "/v1/openapi.json")
    schemas = spec["components"]["schemas"]
    assert schemas["SubmitRequest"] == SubmitRequest.model_json_schema()
    submit = spec["paths"]["/v1/tasks"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SubmitRequest"}
    assert {"201", "400", "403", "405", "413"} <= set(submit["responses"])
    node = spec["paths"]["/v1/tasks/{task_id}/nodes/{node_id}"]["get"]
    patterns = {p["name"]: p["schema"]["pattern"] for p in node["parameters"]}
    assert patterns == {"task_id": "^t[0-9a-f]{11}$", "node_id": "^[0-9]{1,9}$"}
    assert {"400", "403", "404", "405"} <= set(node["responses"])
    error = schemas["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message"]
    for code in ("400", "403", "404", "405", "409", "413", "500"):
        assert spec["components"]["responses"][code]["content"]["application/json"] == {
            "schema": {"$ref": "#/components/schemas/Error"}}


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/v1/tasks/..", 400),
        ("GET", "/v1/tasks/%2e%2e%2fetc", 400),
        ("GET", "/v1/tasks/T00000000000", 400),
        ("GET", "/v1/tasks/t00000000000x", 400),
        ("GET", "/v1/tasks/t00000000000", 404),
        ("POST", "/v1/tasks/%00/cancel", 400),
        ("GET", "/v1/tasks/t00000000000/nodes/%D9%A1", 400),
        ("GET", "/v1/tasks/t00000000000/nodes/1234567890", 400),
        ("GET", "/v1/events?task_id=../../x", 400),
        ("GET", "/v1/events?task_id=t00000000000", 404),
        ("HEAD", "/v1/health", 405),
    ],
)
async def test_ids_are_checked_before_anything_is_looked_up(
    daemon: Daemon, client: Client, method: str, target: str, status: int
) -> None:
    reply = await asyncio.to_thread(send, daemon.socket_path, method, target)
    assert reply.status == status
    if method != "HEAD":
        code = json.loads(reply.body)["error"]["code"]
        assert code == ("invalid_request" if status == 400 else
                        "task_not_found" if status == 404 else "method_not_allowed")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"task_dir": "relative/dir"}', 400, "absolute"),
        (b'{"task_dir": "/x\\u0000y"}', 400, "NUL"),
        (b'{"task_dir": "/x\\ud800"}', 400, "'task_dir'"),
        (b'{"task_dir": "/x", "name": "\\udc80"}', 400, "surrogate"),
        (b'{"task_dir": "/x", "max_cost": Infinity}', 400, "max_cost"),
        (b'{"task_dir": "/x", "time_limit_s": NaN}', 400, "time_limit_s"),
        (b'{"task_dir": "/x", "max_tokens": 99999999999999999999999}', 400, "max_tokens"),
        (b'{"task_dir": "/x", "target": "' + b"t" * 1025 + b'"}', 400, "target"),
        (b'{"task_dir": "/x", "policy": "' + b"p" * 33 + b'"}', 400, "policy"),
        (b"[" * 60_000, 400, "nested"),
        (b'{"task_dir": "/x", "pad": "' + b"a" * MAX_BODY + b'"}', 413, "64 KiB"),
    ],
)
async def test_bad_submissions_are_4xx_with_the_reason(
    daemon: Daemon, client: Client, body: bytes, status: int, fragment: str
) -> None:
    reply = await asyncio.to_thread(send, daemon.socket_path, "POST", "/v1/tasks", body,
                                    {"Content-Type": "application/json; charset=bogus"})
    assert reply.status == status
    assert fragment in json.loads(reply.body)["error"]["message"]
    assert (await client.health())["status"] == "ok"


SYSTEM_PATHS = ["/", "/proc", "/proc/self", "/proc/1/cwd", "/proc/self/root/etc",
                "/proc/self/fd/0", "/proc/self/fd", "/sys/class", "/dev", "/dev/stdin", "/root",
                "/etc/shadow", "/tmp", "/var", "/..", "/./.", "//etc//"]


@settings(FUZZ_SETTINGS, max_examples=400)
@given(
    st.one_of(
        st.sampled_from(SYSTEM_PATHS),
        st.builds(lambda a, b: a.rstrip("/") + "/" + b, st.sampled_from(SYSTEM_PATHS),
                  st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)),
    ),
    st.booleans(),
)
def test_folder_checks_end_in_a_refusal_or_a_pass_never_a_crash(path: str, root: bool) -> None:
    uid = 0 if root else 4_000_000
    peer = Peer(pid=1, uid=uid, gid=uid, groups=frozenset({uid}), name=str(uid))
    placement = Placement(roots=(Path("/tmp"), Path("/var")), state_dir=Path("/var/lib/mlm-x"))
    try:
        check_task_folder(Path(path), peer, placement)
    except (Forbidden, InvalidTaskDir):
        pass
