"""The documents are tested: every command that README.md, BENCHMARKS.md and docs/*.md show
(``flows/*.py``, ``benchmarks/*.py``, ``bgwsol localize|serve|check-background``, ``bgwsol-eval``; in fenced
blocks and in inline code) names only flags that the command accepts. Nothing is run but each
command's ``--help``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT = re.compile(r"(?:^|/)((?:flows|benchmarks)/\w+\.py)$")
SEPARATORS = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}
FLAG = re.compile(r"^(--[A-Za-z][\w.\-]*)")
SUBCOMMANDS = ("localize", "serve", "check-background")  # of the `bgwsol` command
# flags of `ray job submit` that the README names alone, beside its job commands
RAY_JOB_FLAGS = {"--working-dir", "--runtime-env-json"}


def code_spans(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block (continuation lines joined) and every inline
    code span outside them."""
    spans, fence, start, outside = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            outside.append((number, ""))  # a fence ends the paragraph before it
            if fence is None:
                fence, start = [], number
            else:
                spans.append((start, "\n".join(fence).replace("\\\n", " ")))
                fence = None
            continue
        if fence is not None:
            fence.append(line)
        else:
            outside.append((number, line))
    # inline code may wrap across the lines of a paragraph: each paragraph is read as one line
    paragraph: list[tuple[int, str]] = []
    for number, line in [*outside, (0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        text = "\n".join(part for _, part in paragraph)
        for m in re.finditer(r"`([^`]+)`", text):
            spans.append((paragraph[0][0] + text.count("\n", 0, m.start()), m.group(1).replace("\n", " ")))
        paragraph = []
    return spans


def words_of(code: str) -> list[str]:
    try:
        return shlex.split(code, comments=True)
    except ValueError:  # an unbalanced quote in prose-like code: plain words are enough here
        return code.split()


def commands_in(code: str) -> list[tuple[str, list[str]]]:
    """``(command, [flags])`` for each command of ours in ``code``; a command's flags are the
    ``--words`` after it up to the next command or shell separator."""
    found = []
    for line in code.splitlines():
        words = words_of(line)
        current = None
        for i, word in enumerate(words):
            script = SCRIPT.search(word)
            command = None
            if script:
                command = script.group(1)
            elif word.endswith("bgwsol-eval"):
                command = "bgwsol-eval"
            elif (word == "bgwsol" or word.endswith("/bgwsol")) and i + 1 < len(words) and \
                    words[i + 1] in SUBCOMMANDS:
                command = f"bgwsol {words[i + 1]}"
            if command:
                current = (command, [])
                found.append(current)
            elif word in SEPARATORS:
                current = None
            elif current is not None and (m := FLAG.match(word.split("=")[0])):
                current[1].append(m.group(1))
    return found


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, command, flags)`` for every command the documents show; a flag named alone
    (inline code that starts with ``--``) is shown with the command ``*``: any of ours."""
    shown = []
    for doc in DOCUMENTS:
        for line, code in code_spans(doc.read_text()):
            where = f"{doc.relative_to(ROOT)}:{line}"
            for command, flags in commands_in(code):
                shown.append((where, command, flags))
            if code.startswith("--") and (m := FLAG.match(code.split("=")[0])):
                shown.append((where, "*", [m.group(1)]))
    return shown


def every_command() -> list[str]:
    """Each command of ours: the flows, the benchmark scripts, ``bgwsol localize|serve``, ``bgwsol-eval``."""
    scripts = [str(p.relative_to(ROOT)) for folder in ("flows", "benchmarks") for p in sorted((ROOT / folder).glob("*.py"))]
    return [*scripts, *(f"bgwsol {sub}" for sub in SUBCOMMANDS), "bgwsol-eval"]


@lru_cache(maxsize=None)
def accepted_flags(command: str) -> frozenset[str]:
    """The flags ``command --help`` lists: its usage lines and every option line (aliases included)."""
    if command.startswith("bgwsol-eval"):
        argv = [sys.executable, "-m", "bgwsol.evaluation.cli", "--help"]
    elif command.startswith("bgwsol "):
        argv = [sys.executable, "-m", "bgwsol.serving.cli", command.split()[1], "--help"]
    else:
        if not (ROOT / command).exists():
            return frozenset({"<missing>"})
        argv = [sys.executable, str(ROOT / command), "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{' '.join(argv[1:])}: {done.stderr[-2000:]}"
    text = done.stdout
    usage = text.split("\n\n", 1)[0]
    options = "\n".join(line for line in text.splitlines() if re.match(r"^\s{1,8}-", line))
    return frozenset(re.findall(r"--[A-Za-z][\w.\-]*", usage + "\n" + options)) | {"--help"}


def test_the_extraction_finds_commands_and_their_flags():
    code = ("PYTHONPATH=. python benchmarks/bench_serve.py --images x --clients 8 | tee log && "
            ".venv/bin/bgwsol localize --model m --tracking-uri=u a.jpg")
    assert commands_in(code) == [("benchmarks/bench_serve.py", ["--images", "--clients"]),
                                 ("bgwsol localize", ["--model", "--tracking-uri"])]
    text = ("a `flows/compare_methods.py … --method.obj_target\ncam` b\n\n```bash\npython flows/x.py \\\n  --a 1\n```\n"
            "and `--tune 4`\n")
    spans = code_spans(text)
    assert [c for _, s in spans for c in commands_in(s)] == [
        ("flows/x.py", ["--a"]), ("flows/compare_methods.py", ["--method.obj_target"])]
    assert (1, "flows/compare_methods.py … --method.obj_target cam") in spans and (8, "--tune 4") in spans


def test_the_documents_show_commands():
    commands = {command for _, command, _ in shown_commands()}
    assert {"flows/train_ilsvrc.py", "flows/compare_methods.py", "bgwsol localize", "bgwsol serve",
            "bgwsol check-background"} <= commands
    assert any(c.startswith("benchmarks/") for c in commands)


def test_every_flag_the_documents_show_is_accepted():
    wrong = []
    for where, command, flags in shown_commands():
        if command == "*":
            flag = flags[0]
            if flag in RAY_JOB_FLAGS:
                continue
            if flag.endswith("."):  # a group of flags (`--run.`): some command has one of its members
                if not any(f.startswith(flag) for c in every_command() for f in accepted_flags(c)):
                    wrong.append(f"{where}: no command has a flag {flag}*")
            elif not any(flag in accepted_flags(c) for c in every_command()):
                wrong.append(f"{where}: {flags[0]} is a flag of none of our commands")
            continue
        accepted = accepted_flags(command)
        if "<missing>" in accepted:
            wrong.append(f"{where}: {command} does not exist")
            continue
        wrong += [f"{where}: {command} {flag}" for flag in flags if flag not in accepted]
    assert wrong == [], "flags the documents show that the command does not accept:\n" + "\n".join(wrong)


@pytest.mark.parametrize("command", ["flows/train_ilsvrc.py", "bgwsol localize"])
def test_a_flag_that_does_not_exist_is_caught(command):
    flags = accepted_flags(command)
    assert "--help" in flags and len(flags) > 3 and "--method.obj_target" not in flags
