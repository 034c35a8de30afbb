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
from mlmaster_daemon.node_view import code_diff, new_output, node_sections, task_lines

# How often `logs --follow` asks for a running node's output.
FOLLOW_POLL_S = 0.5


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
        shown = ""
        while True:
            node = await client.node(args.task_id, args.node)
            text = node.get("output_tail") or ""
            if text != shown:
                sys.stdout.write(new_output(shown, text))
                sys.stdout.flush()
                shown = text
            if not args.follow or NodeState(node["status"]).terminal:
                break
            await asyncio.sleep(FOLLOW_POLL_S)
        if shown and not shown.endswith("\n"):
            _print("")
        if not shown:
            _print(f"node {args.node} has no output yet ({node['status']})")
        return 0

    return _client_call(args, go)


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
