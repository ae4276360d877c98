"""The command-line reference, generated from the argument parser itself so that it cannot drift.

``describe(parser)`` reads an :class:`argparse.ArgumentParser` (no Sphinx needed: the test
suite calls it); the ``cli-reference`` directive renders what it returns: a summary of the
sub-commands, then for each one its description, its usage and every argument with its
help text, choices and default. Help texts are shown as plain text, never parsed as markup.

In a page::

    ```{cli-reference} unlearn_lens.cli:_parser
    ```
"""

from __future__ import annotations

import argparse
import copy
import importlib
from dataclasses import dataclass, field
from typing import Any

USAGE_WIDTH = 78


@dataclass
class Argument:
    """One argument of a command: how it is spelt and what it does."""

    names: list[str]
    metavar: str
    help: str
    positional: bool
    required: bool
    choices: list[str] = field(default_factory=list)


@dataclass
class Command:
    """One (sub-)command: its name, one-line summary, description, usage and arguments."""

    prog: str
    name: str
    summary: str
    description: str
    usage: str
    arguments: list[Argument]
    subcommands: list[Command] = field(default_factory=list)


def load_parser(spec: str) -> argparse.ArgumentParser:
    """The parser that ``"module:function"`` returns."""
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)()


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _argument(parser: argparse.ArgumentParser, action: argparse.Action) -> Argument:
    formatter = parser._get_formatter()
    positional = not action.option_strings
    shown = action
    if action.choices and action.metavar is None:  # the choices are listed beside the help, not in the flag
        shown = copy.copy(action)
        shown.metavar = action.dest.upper()
    metavar = formatter._format_args(shown, action.dest.upper()) if action.nargs != 0 else ""
    text = formatter._expand_help(action) if action.help else ""
    return Argument(
        names=list(action.option_strings) or [action.metavar or action.dest],
        metavar="" if positional else metavar,
        help=" ".join(text.split()),
        positional=positional,
        required=bool(action.required) and not positional,
        choices=[str(c) for c in action.choices] if action.choices and not positional else [],
    )


def describe(parser: argparse.ArgumentParser, name: str | None = None, summary: str = "") -> Command:
    """Everything the reference shows of ``parser`` and its sub-commands, in the parser's order."""
    arguments, subcommands = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            for sub_name, sub in action.choices.items():
                subcommands.append(describe(sub, sub_name, summaries.get(sub_name, "")))
            continue
        arguments.append(_argument(parser, action))
    return Command(
        prog=parser.prog,
        name=name or parser.prog,
        summary=summary,
        description=" ".join((parser.description or "").split()),
        usage=_usage(parser),
        arguments=arguments,
        subcommands=subcommands,
    )


def _table(rows: list[tuple[Any, Any, str]], widths: tuple[int, int], classes: list[str]) -> Any:
    """A two-column table of (first cell, second cell, row id) without a header."""
    from docutils import nodes

    table = nodes.table(classes=classes)
    table["support_smartquotes"] = False  # help texts as written: "--flag" keeps its two hyphens
    group = nodes.tgroup(cols=2)
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    body = nodes.tbody()
    for first, second, row_id in rows:
        row = nodes.row(ids=[row_id] if row_id else [])
        row += nodes.entry("", first)
        row += nodes.entry("", second)
        body += row
    group += body
    return table


def _nodes(command: Command, anchor: str) -> list[Any]:
    from docutils import nodes

    out: list[Any] = []
    if command.description:
        description = nodes.paragraph(text=command.description)
        description["support_smartquotes"] = False
        out.append(description)
    out.append(nodes.literal_block(command.usage, command.usage, language="none"))
    rows = []
    for arg in command.arguments:
        flags = nodes.paragraph()
        for i, name in enumerate(arg.names):
            if i:
                flags += nodes.Text(", ")
            flags += nodes.literal(text=f"{name} {arg.metavar}".strip())
        text = arg.help
        if arg.choices:
            text += f" Choices: {', '.join(arg.choices)}."
        if arg.required:
            text += " Required."
        slug = arg.names[0].lstrip("-").replace("_", "-")
        rows.append((flags, nodes.paragraph(text=text), f"{anchor}-{slug}"))
    if rows:
        out.append(_table(rows, (35, 65), ["cli-options"]))
    return out


def _summary(command: Command) -> Any:
    from docutils import nodes

    rows = []
    for sub in command.subcommands:
        ref = nodes.reference("", "", internal=True, refid=f"cli-{sub.name}")
        ref += nodes.literal(text=sub.prog)
        rows.append((nodes.paragraph("", "", ref), nodes.paragraph(text=sub.summary), ""))
    return _table(rows, (30, 70), ["cli-summary"])


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class CliReference(SphinxDirective):
        """``cli-reference module:function``: the parser's summary, then one section per sub-command."""

        required_arguments = 1

        def run(self) -> list[Any]:
            command = describe(load_parser(self.arguments[0]))
            out: list[Any] = _nodes(command, "cli")
            out.append(_summary(command))
            for sub in command.subcommands:
                section = nodes.section(ids=[f"cli-{sub.name}"], names=[f"cli-{sub.name}"])
                section += nodes.title(text=sub.prog)
                if sub.summary:
                    summary = nodes.paragraph("", "", nodes.emphasis(text=sub.summary[0].upper() + sub.summary[1:]))
                    summary["support_smartquotes"] = False
                    section += summary
                section.extend(_nodes(sub, f"cli-{sub.name}"))
                self.state.document.note_implicit_target(section, section)
                out.append(section)
            return out

    app.add_directive("cli-reference", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
