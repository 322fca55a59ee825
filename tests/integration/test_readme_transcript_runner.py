"""The transcript runner behind test_readme_transcripts.py, on small Markdown texts (commands run in bash)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.readme_transcripts import normalise, run_section, transcripts

MARKDOWN = """# A tool

## Walkthrough

Say hello:

    $ echo hello
    hello

Two commands in one fenced block, sharing the folder with the block above:

```console
$ echo one > note.txt
$ cat note.txt
one
```

*Not run by `make test`: needs a relay on port 2526.*

    $ touch not-run.txt
    anything

## Elsewhere

    $ touch elsewhere.txt
"""


def _env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"]}


def test_each_dollar_line_is_a_command_with_the_lines_after_it_as_its_output() -> None:
    found = transcripts(MARKDOWN)

    assert [(t.section, t.line, t.not_run) for t in found] == [
        ("Walkthrough", 7, None),
        ("Walkthrough", 13, None),
        ("Walkthrough", 20, "needs a relay on port 2526"),
        ("Elsewhere", 25, None),
    ]
    assert [(c.line, c.command, c.expected) for c in found[1].commands] == [
        (13, "echo one > note.txt", ""),
        (14, "cat note.txt", "one\n"),
    ]


def test_a_section_runs_in_order_in_one_folder_and_a_marked_block_is_counted_not_run(tmp_path: Path) -> None:
    outcome = run_section(transcripts(MARKDOWN), "Walkthrough", tmp_path, _env())

    assert outcome.failures == []
    assert [t.line for t in outcome.ran] == [7, 13]
    assert [t.not_run for t in outcome.not_run] == ["needs a relay on port 2526"]
    assert not (tmp_path / "not-run.txt").exists()
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_changed_output_line_fails_with_a_diff_naming_the_line(tmp_path: Path) -> None:
    changed = MARKDOWN.replace("    hello\n", "    hello, world\n")

    outcome = run_section(transcripts(changed), "Walkthrough", tmp_path, _env(), source="GUIDE.md")

    assert len(outcome.failures) == 1
    failure = outcome.failures[0]
    assert failure.startswith("$ echo hello  (exit 0)\n")
    assert "GUIDE.md:7 (shown)" in failure
    assert "-hello, world" in failure
    assert "+hello" in failure


def test_a_command_that_prints_nothing_where_output_is_shown_fails(tmp_path: Path) -> None:
    markdown = "## S\n\n    $ true\n    something\n"

    outcome = run_section(transcripts(markdown), "S", tmp_path, _env())

    assert len(outcome.failures) == 1


def test_message_ids_and_link_signatures_are_the_only_values_normalised() -> None:
    shown = "Message-ID: <d0.e5d8fc7aaa3d7015@acmeflow.example>\n[x](http://h/u/eyJkIjowfQ.vXengMpuFKIhd9syJYFTsw)"
    got = "Message-ID: <d0.05ec9c100fa25757@acmeflow.example>\n[x](http://h/u/eyJkIjowfQ.eb-A7QbTwJv8LELd2InkLw)"

    assert normalise(shown) == normalise(got)
    assert normalise("score 4 -> 19") != normalise("score 5 -> 19")
    assert normalise("<d1.05ec9c100fa25757@x>") != normalise("<d0.05ec9c100fa25757@x>")
    assert normalise("http://h/u/eyJkIjowfQ.x") != normalise("http://h/u/eyJkIjoxfQ.x")


@given(st.lists(st.text(alphabet="ab -", max_size=8), max_size=6), st.integers(0, 3))
def test_trailing_spaces_and_trailing_blank_lines_never_matter(lines: list[str], blank: int) -> None:
    text = "\n".join(lines)
    padded = "\n".join(line + "  " for line in lines) + "\n" * blank

    assert normalise(padded) == normalise(text)
