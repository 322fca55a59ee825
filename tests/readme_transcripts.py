"""Run the command transcripts of a Markdown file and compare their output with what the file shows.

A transcript is a code block (indented or fenced) whose first line starts with `$ `. Each `$ ` line is one
command; the lines after it, up to the next `$ ` line, are what it prints (stdout and stderr together, as a
terminal shows them). Commands run in `bash -c`, in order, in one working folder per `##` section, so the
blocks of a section share state as a reader running them one after another would.

A block that cannot run here says so where the reader sees it: the paragraph just before it is
`*Not run by `make test`: REASON.*`. Such a block is counted, never run; any other block of a chosen section
runs, so nothing is skipped without a visible reason.

Output is compared after `normalise`: trailing spaces and trailing blank lines are dropped, and the few
values that differ on every machine (listed in NORMALISE) are replaced by a placeholder.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from markdown_it import MarkdownIt
from markdown_it.token import Token

NOT_RUN: Final = re.compile(r"^\*Not run by `make test`: (?P<reason>.+)\.\*$")

# Each machine generates its own secret key (var/secret.key), which signs Message-IDs and links.
NORMALISE: Final = (
    # Message-ID: <d0.e5d8fc7aaa3d7015@acmeflow.example>, <test.7a7d9343e2998d7e@acmeflow.example>
    (re.compile(r"<([\w-]+)\.[0-9a-f]{16}@"), r"<\1.ID@"),
    # a signed link: /u/PAYLOAD.SIGNATURE (unsubscribe), /c/..., /o/...
    (re.compile(r"(/[a-z]/[\w-]+)\.[\w-]{22}\b"), r"\1.SIGNATURE"),
)


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line of the `$ ` line in the Markdown file
    command: str
    expected: str


@dataclass(frozen=True)
class Transcript:
    section: str
    line: int
    commands: tuple[Command, ...]
    not_run: str | None = None  # the reason the file gives, for a block that is not run


@dataclass
class Outcome:
    ran: list[Transcript] = field(default_factory=list)
    not_run: list[Transcript] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Block:
    section: str
    line: int  # 1-based line of the block's first line of content
    info: str  # a fence's language ("yaml"), "" for an indented block
    content: str
    not_run: str | None


def blocks(markdown: str) -> list[Block]:
    """Every code block of `markdown`, in order, with its `##` section."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    found: list[Block] = []
    section = ""
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            section = tokens[index + 1].content
        elif token.type in ("code_block", "fence") and token.map:
            first = token.map[0] + 1 + (token.type == "fence")
            found.append(Block(section, first, token.info.strip(), token.content, _not_run(tokens, index)))
    return found


def transcripts(markdown: str) -> list[Transcript]:
    """Every transcript of `markdown`, in order, with its `##` section."""
    return [
        Transcript(block.section, block.line, tuple(_commands(block.content, block.line)), block.not_run)
        for block in blocks(markdown)
        if block.content.startswith("$ ")
    ]


def _commands(content: str, first_line: int) -> list[Command]:
    commands: list[Command] = []
    for number, text in enumerate(content.splitlines(), first_line):
        if text.startswith("$ "):
            commands.append(Command(number, text[2:], ""))
        else:
            last = commands[-1]
            commands[-1] = Command(last.line, last.command, last.expected + text + "\n")
    return commands


def _not_run(tokens: list[Token], index: int) -> str | None:
    """The reason in a `*Not run by `make test`: ...*` paragraph right before token `index`, if any."""
    if index < 3 or tokens[index - 1].type != "paragraph_close":
        return None
    match = NOT_RUN.match(tokens[index - 2].content)
    return match["reason"] if match else None


def normalise(text: str) -> str:
    for pattern, replacement in NORMALISE:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def run_section(
    found: list[Transcript], section: str, cwd: Path, env: Mapping[str, str], source: str = "README.md"
) -> Outcome:
    """Run the transcripts of `section` in order in `cwd`; each differing output is one failure (a diff)."""
    outcome = Outcome()
    for transcript in (t for t in found if t.section == section):
        if transcript.not_run is not None:
            outcome.not_run.append(transcript)
            continue
        outcome.ran.append(transcript)
        for command in transcript.commands:
            failure = _run(command, cwd, env, source)
            if failure:
                outcome.failures.append(failure)
    return outcome


def _run(command: Command, cwd: Path, env: Mapping[str, str], source: str) -> str | None:
    done = subprocess.run(
        ["bash", "-c", command.command],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    shown, got = normalise(command.expected), normalise(done.stdout)
    if shown == got:
        return None
    diff = difflib.unified_diff(
        shown.splitlines(), got.splitlines(), f"{source}:{command.line} (shown)", "output", lineterm=""
    )
    return f"$ {command.command}  (exit {done.returncode})\n" + "\n".join(diff)


def command_env(bin_dir: Path) -> dict[str, str]:
    """The caller's environment without any `NURTURE_*` setting, with `bin_dir` first on PATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NURTURE_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env
