"""Every code block of README.md is run: the manual says only what works.

README.md's fenced blocks are read by language:

* ``python``: the block is run as a script by this interpreter, in a fresh process and an empty
  temporary folder; it must exit 0 (blocks assert what they claim).
* ``bash`` / ``sh``: the block is run by ``bash -e -o pipefail`` in an empty temporary folder, with
  the folder of this interpreter first on ``PATH`` (so ``gadget`` is the one under test); every
  command must succeed. ``console``: the lines after a ``$ `` prompt are the commands (other lines
  are their output, not checked).
* ``text``: output shown to the reader, never run.

A marker on the line just before a block changes how it is checked:

* ``<!-- readme-test: gpu -->``: skipped, with the reason, unless this build has a CUDA device
  (as ``tests/test_gpu.py`` checks); run like any other block where one exists.
* ``<!-- readme-test: ci -->``: commands that cannot run inside the test suite (installing the
  package, running the suite itself): each must appear verbatim in ``.ci/run``, which CI executes.

Any other language, an unknown marker, a marker not followed by a block, or an indented (unfenced)
code block fails: nothing in the README goes unchecked by accident.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import gadget

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
CI_SCRIPT = ROOT / '.ci' / 'run'
SHELLS = ('bash', 'sh', 'console')
LANGUAGES = ('python', 'text', *SHELLS)
MARKERS = ('gpu', 'ci')
TIMEOUT = 900            # seconds for one block (some prepare a model the first time)
# Blocks that load a model or run a command take more than a few seconds.
SLOW = re.compile(r'TextGen|TextChat|ShrekGen|ShrekChat|Embed(Numpy|Torch)|default_\w*model_path|'
                  r'\bgadget (generate|chat|embed|bench|graph)\b')

_FENCE = re.compile(r'^( *)(```+|~~~+)\s*([^\s`]*)\s*$')
_MARKER = re.compile(r'^\s*<!--\s*readme-test:\s*(.*?)\s*-->\s*$')


@dataclass
class Block:
    language: str
    marker: str | None
    code: str
    line: int          # README line of the block's first code line (1-based)
    heading: str

    @property
    def id(self) -> str:
        return re.sub(r'[^a-z0-9]+', '-', self.heading.lower()).strip('-') or 'top'


def parse(text: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``text``, and the problems found (unknown markers, stray markers,
    unclosed fences, indented code blocks)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    heading, marker, marker_line = '', None, 0
    list_indent = 0     # the text indent of the list item being read (0: none)
    previous_blank = True
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        found = _MARKER.match(line)
        if found:
            if marker is not None:
                problems.append(f'line {marker_line}: marker {marker!r} is not followed by a code block')
            marker, marker_line = found.group(1), i + 1
            if marker not in MARKERS:
                problems.append(f'line {i + 1}: unknown marker {marker!r} (known: {", ".join(MARKERS)})')
        elif fence:
            indent, ticks, language = len(fence.group(1)), fence.group(2), fence.group(3)
            start = i + 1
            i += 1
            body = []
            while i < len(lines) and not (lines[i].strip().startswith(ticks[0] * len(ticks))
                                          and not lines[i].strip().strip(ticks[0])):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == '' else lines[i])
                i += 1
            if i == len(lines):
                problems.append(f'line {start}: code block never closed')
            if marker is not None and marker_line != start - 1:
                problems.append(f'line {marker_line}: marker {marker!r} is not on the line just before a '
                                'code block')
                marker = None
            blocks.append(Block(language, marker, '\n'.join(body) + '\n', start + 1, heading))
            marker = None
            previous_blank = False
        else:
            indent = len(line) - len(line.lstrip(' '))
            item = re.match(r'( *)([*+-]|\d+\.) +', line)
            if line.startswith('#'):
                heading, list_indent = line.lstrip('#').strip(), 0
            elif item:
                list_indent = len(item.group(0))     # where the item's text starts
            elif previous_blank and line.strip() and indent >= list_indent + 4:
                problems.append(f'line {i + 1}: an indented code block: fence it (```python, ```bash, '
                                '```text) so that it is checked')
            elif line.strip() and indent < list_indent:
                list_indent = 0                      # text outside the list ends it
            if marker is not None and line.strip():
                problems.append(f'line {marker_line}: marker {marker!r} is not followed by a code block')
                marker = None
            previous_blank = not line.strip()
        i += 1
    if marker is not None:
        problems.append(f'line {marker_line}: marker {marker!r} is not followed by a code block')
    return blocks, problems


BLOCKS, PROBLEMS = parse(README.read_text(encoding='utf-8'))


def _params() -> list:
    params, seen = [], {}
    for block in BLOCKS:
        if block.language == 'text':
            continue
        seen[block.id] = seen.get(block.id, 0) + 1
        marks = [pytest.mark.slow] if SLOW.search(block.code) else []
        params.append(pytest.param(block, id=f'{block.id}-{seen[block.id]}', marks=marks))
    return params


def test_readme_has_only_known_blocks_and_markers():
    problems = list(PROBLEMS)
    for block in BLOCKS:
        if block.language not in LANGUAGES:
            problems.append(f'line {block.line}: a ```{block.language or "(no language)"} block: use one of '
                            f'{", ".join(LANGUAGES)} so that it is checked')
        if block.language == 'text' and block.marker:
            problems.append(f'line {block.line}: a text block is never run: marker {block.marker!r} '
                            'means nothing there')
    assert not problems, 'README.md:\n' + '\n'.join(problems)


def test_readme_has_blocks_of_each_kind():
    languages = {block.language for block in BLOCKS}
    assert {'python', 'bash'} <= languages, languages


def _cuda_device() -> bool:
    return 'cuda:0' in gadget.backends()


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
    # the subprocess imports the gadget this test imported, wherever that is
    package_parent = str(Path(gadget.__file__).resolve().parent.parent)
    env['PYTHONPATH'] = package_parent + os.pathsep + env.get('PYTHONPATH', '')
    env.pop('PYTHONSTARTUP', None)
    return env


def _commands(block: Block) -> list[str]:
    """The block's commands, one per logical line (continuations joined; comments and, in a
    console block, output lines left out)."""
    lines = block.code.splitlines()
    if block.language == 'console':
        kept, continued = [], False
        for line in lines:
            if line.startswith('$ ') or continued:
                kept.append(line[2:] if line.startswith('$ ') and not continued else line)
                continued = line.endswith('\\')
        lines = kept
    commands, current = [], ''
    for line in lines:
        current += line[:-1] + ' ' if line.endswith('\\') else line
        if line.endswith('\\'):
            continue
        command = current.strip()
        current = ''
        if command and not command.startswith('#'):
            commands.append(re.sub(r'\s+#\s.*$', '', command))
    return commands


def _ci_commands() -> str:
    """What .ci/run executes: its lines without comments and without what it only echoes."""
    kept = []
    for line in CI_SCRIPT.read_text(encoding='utf-8').splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith('#') or re.match(r'echo\b', stripped):
            continue
        kept.append(re.sub(r'\s+#\s.*$', '', line))
    return '\n'.join(kept)


def _failure(block: Block, what: str, proc: subprocess.CompletedProcess) -> str:
    return (f'README.md line {block.line} ({block.heading}): {what} exited {proc.returncode}\n'
            f'--- stdout (end)\n{proc.stdout[-4000:]}\n--- stderr (end)\n{proc.stderr[-6000:]}')


@pytest.mark.parametrize('block', _params())
def test_readme_block(block: Block, tmp_path: Path):
    if block.language not in LANGUAGES:
        pytest.fail(f'README.md line {block.line}: ```{block.language} blocks are not checked')
    if block.marker == 'gpu' and not _cuda_device():
        pytest.skip('needs a CUDA device: none in this build/machine '
                    '(build with CMAKE_ARGS="-DGGML_CUDA=ON")')
    if block.marker == 'ci':
        ci = _ci_commands()
        missing = [c for c in _commands(block) if c not in ci]
        assert not missing, (f'README.md line {block.line}: commands marked ci that .ci/run does not run '
                             f'verbatim: {missing}')
        return
    if block.language == 'python':
        # padded so that a traceback's line numbers are README.md's
        script = tmp_path / 'README_md.py'
        script.write_text('\n' * (block.line - 1) + block.code, encoding='utf-8')
        proc = subprocess.run([sys.executable, script.name], cwd=tmp_path, env=_environment(),
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, _failure(block, 'the Python block', proc)
    else:
        script = "trap 'echo \"README.md: command failed: $BASH_COMMAND\" >&2' ERR\n"
        script += '\n'.join(_commands(block)) if block.language == 'console' else block.code
        proc = subprocess.run(['bash', '-e', '-o', 'pipefail', '-c', script], cwd=tmp_path,
                              env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, _failure(block, 'the shell block', proc)


def test_parser_reports_what_would_go_unchecked():
    text = '\n'.join([
        '# Title', '', '<!-- readme-test: gpuu -->', '```python', 'x = 1', '```', '',
        '<!-- readme-test: ci -->', '', 'a paragraph', '',
        '    indented code', '',
        '* a list', '', '    continued list text', '',
        '```', 'no closing fence'])
    blocks, problems = parse(text)
    assert [(b.language, b.marker, b.code, b.line, b.heading) for b in blocks][0] == \
        ('python', 'gpuu', 'x = 1\n', 5, 'Title')
    assert any("unknown marker 'gpuu'" in p for p in problems)
    assert any("line 8: marker 'ci' is not followed by a code block" in p for p in problems)
    assert any('line 12: an indented code block' in p for p in problems)
    assert not any('line 16' in p for p in problems)     # list continuation text is not code
    assert any('never closed' in p for p in problems)


def test_commands_of_a_console_block_are_the_prompted_lines():
    code = '$ gadget info\ngadget 0.1.0\n$ gadget embed \\\n  "a b" # two words\n{}\n'
    block = Block('console', None, code, 1, 'x')
    assert _commands(block) == ['gadget info', 'gadget embed    "a b"']
