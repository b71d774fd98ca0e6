"""docs/cli.md, generated from the parser so the reference cannot drift from the commands:
``python -m edge_agent.cli_doc > docs/cli.md`` (a test checks it is fresh)."""

from __future__ import annotations

import argparse

from edge_agent.cli import _Version
from edge_agent.cli_args import build_parser, subparsers_of

INTRO = """\
# Command line reference

Generated from the parser (`python -m edge_agent.cli_doc > docs/cli.md`); `edge-agent COMMAND
--help` prints the same. Every command takes the global options `--log-level` and
`--log-format`, before or after the command. Commands that read a config file take it as
`-c FILE` (or positionally) and otherwise read `$EDGE_AGENT_CONFIG`; the commands that talk to
a running agent (`status`, `tail`, `reload`, `context`, `device command`) find its control
socket from `--socket`, `-c FILE` (even a file that does not validate), `$EDGE_AGENT_SOCKET`,
`$EDGE_AGENT_CONFIG`, else `data/control.sock`.

Exit status: 0 success; 1 failure (an agent not reachable, a device command refused, a probe
that read nothing, a journal that failed while running); 2 a usage or config error (nothing
was started; systemd does not restart the unit: `RestartPreventExitStatus=2`); 3 (`status`)
the agent is running with an active alarm; 75 the agent could not start now (its journal,
control socket or metrics port is in use, or `buffer.path` is not writable): one line says
which, and systemd retries. Errors are one line on stderr, never a traceback.
"""


def _row(action: argparse.Action) -> str | None:
    if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
        return None
    if action.option_strings:
        names = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
    else:
        names = f"`{action.metavar or action.dest}`"
    help_ = (action.help or "").replace("|", "\\|").replace("\n", " ")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        help_ += f" (one of: {', '.join(str(c) for c in action.choices)})"
    return f"| {names} | {help_} |"


def render() -> str:
    parser = build_parser(_Version)
    out = [INTRO]
    for p in subparsers_of(parser):
        has_sub = any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        if has_sub:
            continue  # a group (config, trace, ...): its commands follow
        name = p.prog.removeprefix("edge-agent ")
        out.append(f"## edge-agent {name}\n")
        if p.description:
            out.append(p.description.strip() + "\n")
        elif help_text := _summary(parser, name):
            out.append(help_text + "\n")
        rows = [r for a in p._actions if (r := _row(a)) is not None and not _global(a)]
        if rows:
            out.append("| option | meaning |\n| --- | --- |")
            out.extend(rows)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _global(action: argparse.Action) -> bool:
    return bool(set(action.option_strings) & {"--log-level", "--log-format"})


def _summary(parser: argparse.ArgumentParser, name: str) -> str | None:
    """The help line the command has in its parent's list."""
    words = name.split()
    current = parser
    for i, word in enumerate(words):
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction) and word in action.choices:
                if i == len(words) - 1:
                    for choice in action._choices_actions:
                        if choice.dest == word:
                            return choice.help
                current = action.choices[word]
                break
    return None


if __name__ == "__main__":
    print(render(), end="")
