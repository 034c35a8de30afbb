"""`mlmaster show`, `logs` and `diff`: a task's nodes, read from the daemon's API."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.cli import _client_call, _print, _task_summary
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.models import NodeState
from mlmaster_daemon.node_view import code_diff, node_sections, task_lines

# How often `logs --follow` asks for a running node's output, and how much of what was
# written before it started it shows.
FOLLOW_POLL_S = 0.5
FOLLOW_START_BYTES = 16 * 1024


def show(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        if args.node is not None:
            node = await client.node(args.task_id, args.node)
            if args.json:
                _print(json.dumps(node, indent=2))
                return 0
            for heading, body in node_sections(node):
                _print(f"== {heading}")
                if heading == "code" and body:
                    _print_code(body)
                else:
                    _print(body.rstrip("\n"))
            return 0
        task = await client.task(args.task_id)
        nodes = await client.nodes(args.task_id)
        if args.json:
            _print(json.dumps({**task, "nodes": nodes}, indent=2))
            return 0
        _print(_task_summary(task))
        for line in task_lines(task, nodes):
            _print(line)
        return 0

    return _client_call(args, go)


def _print_code(code: str) -> None:
    """Python code, highlighted by rich on a terminal, plain when piped."""
    if not sys.stdout.isatty():
        _print(code.rstrip("\n"))
        return
    from rich.console import Console
    from rich.syntax import Syntax

    Console().print(Syntax(code, "python", line_numbers=True))


def logs(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        node = await client.node(args.task_id, args.node)
        if not args.follow:
            text = node.get("output_tail") or ""
            _print(text.rstrip("\n") if text else
                   f"node {args.node} has no output yet ({node['status']})")
            return 0
        await _follow_logs(client, args.task_id, args.node)
        return 0

    return _client_call(args, go)


async def _follow_logs(client: Client, task_id: str, node_id: int) -> None:
    """Print the node's stdout to stdout and its stderr to stderr as they grow (starting with
    their last FOLLOW_START_BYTES), until the node has ended and both are read to the end."""
    sinks = {"stdout": sys.stdout, "stderr": sys.stderr}
    offsets: dict[str, int | None] = dict.fromkeys(sinks)
    while True:
        # The state is read before the logs, so output written before the end is not missed.
        ended = NodeState((await client.node(task_id, node_id))["status"]).terminal
        behind = False
        for stream, sink in sinks.items():
            offset = offsets[stream]
            if offset is None:
                first = await client.node_log(task_id, node_id, stream, 0)
                offset = max(first["size"] - FOLLOW_START_BYTES, 0)
                if offset:
                    sink.write(f"[... {offset} bytes of {stream} before]\n")
            chunk = await client.node_log(task_id, node_id, stream, offset)
            sink.write(chunk["text"])
            sink.flush()
            offsets[stream] = chunk["next_offset"]
            behind = behind or chunk["next_offset"] < chunk["size"]
        if ended and not behind:
            return
        if not behind:
            await asyncio.sleep(FOLLOW_POLL_S)


def diff(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        new = await client.node(args.task_id, args.node)
        if args.other is not None:
            old = await client.node(args.task_id, args.other)
        elif new["parent_id"] is not None:
            old = await client.node(args.task_id, int(new["parent_id"]))
        else:
            raise MlmasterError(f"node {args.node} is a root (a draft, no parent): give the node "
                                f"to compare it with, mlmaster diff {args.task_id} "
                                f"{args.node} OTHER")
        text = code_diff(old, new)
        sys.stdout.write(text or f"node {old['id']} and node {new['id']} have the same code\n")
        return 0

    return _client_call(args, go)
