"""Execute the Python code blocks of the documentation, so the docs cannot drift from the code.

What runs:
    Every fenced block whose info string starts with ``python`` (```` ```python ````, also
    with attributes such as ```` ```python title="x.py" ````) in every Markdown page under
    ``docs/``. Blocks of other languages (toml, bash, text, ...) are not executed.

How:
    One test case per page (the id is the page's path under ``docs/``). A page's blocks run
    in order in one shared namespace, as a reader would paste them into one session, inside a
    fresh temporary working directory (so stores and files the examples write land there),
    with matplotlib's non-interactive Agg backend. Plugins a page registers at runtime are
    unregistered afterwards, so pages cannot affect each other. Tracebacks point at the
    Markdown file and line of the failing statement.

Skipping a block (keep this rare):
    Put the HTML comment ``<!-- docs-test: skip: REASON -->`` on its own line as the last
    non-blank line before the block's opening fence, separated from the fence by one blank line
    (Markdown needs the blank line to keep the fence out of the comment's HTML block). The
    reason is required. Use it only for code that cannot run here: it needs a cluster or a
    scheduler (the SLURM recipe), or a package or file that is not installed. The comment is
    invisible on the rendered site. A marker that is not followed by a python block, or has no
    reason, fails ``test_skip_markers_are_placed_and_justified``.
"""

from __future__ import annotations

import dataclasses
import linecache
import re
import sys
import traceback
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

import mechscope

DOCS = Path(__file__).resolve().parents[1] / "docs"
SKIP_MARKER = re.compile(r"^<!-- docs-test: skip: (?P<reason>\S.*?) -->$")
_ANY_MARKER = re.compile(r"<!--\s*docs-test")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    number: int  # 1-based among the page's python blocks
    line: int  # 1-based line of the first code line in the page
    code: str
    skipped: bool


def extract_blocks(text: str) -> list[Block]:
    """The page's ```python blocks in order (indented fences, e.g. in admonitions, included)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower() if opening["info"] else ""
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            line = lines[end]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            end += 1
        else:
            raise ValueError(f"unclosed code fence opened at line {index + 1}")
        if language == "python":
            previous = next(
                (lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), ""
            )
            blocks.append(
                Block(
                    number=len(blocks) + 1,
                    line=index + 2,
                    code="\n".join(body) + "\n",
                    skipped=SKIP_MARKER.match(previous) is not None,
                )
            )
        index = end + 1
    return blocks


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _page_id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix() if page.is_relative_to(DOCS) else str(page)


def _pages_with_code() -> list[Path]:
    return [page for page in _pages() if extract_blocks(page.read_text())]


def run_page(page: Path) -> None:
    """Execute `page`'s blocks in one namespace; fail naming the page, block and line."""
    name = f"docs/{_page_id(page)}" if page.is_relative_to(DOCS) else str(page)
    # A real module in sys.modules: libraries look classes' modules up there (equinox does).
    module = types.ModuleType("docs_page")
    sys.modules[module.__name__] = module
    try:
        _run_blocks(page, name, module.__dict__)
    finally:
        del sys.modules[module.__name__]


def _run_blocks(page: Path, name: str, namespace: dict[str, object]) -> None:
    for block in extract_blocks(page.read_text()):
        if block.skipped:
            continue
        # Pad with blank lines so line numbers in tracebacks are the page's line numbers.
        source = "\n" * (block.line - 1) + block.code
        filename = str(page)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            exec(compile(source, filename, "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - reported with its place in the docs
            frames = traceback.format_exception(error)
            pytest.fail(
                f"{name}, python block {block.number} (starting at line {block.line}) "
                f"raised {type(error).__name__}: {error}\n\n{''.join(frames)}",
                pytrace=False,
            )
        finally:
            plt.close("all")


@pytest.mark.parametrize("page", _pages_with_code(), ids=_page_id)
def test_docs_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every (non-skipped) python block of the page runs without raising."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    manager = mechscope.get_plugin_manager()
    before = set(manager.plugin_names())
    try:
        run_page(page)
    finally:
        for plugin in set(manager.plugin_names()) - before:
            manager.unregister(plugin)


# The extractor decides what runs, so it is tested on its own.

_SAMPLE = """\
Text.

```python
a = 1
```

<!-- docs-test: skip: shows that a marked block is not run -->

```python
raise RuntimeError("must not run")
```

```toml
x = 1
```

!!! note
    ```python title="inside.py"
    b = a + 1
    ```

````python
c = '''
```
'''
````
"""


def test_extract_blocks_finds_python_blocks_and_skip_markers() -> None:
    blocks = extract_blocks(_SAMPLE)
    assert [b.number for b in blocks] == [1, 2, 3, 4]
    assert [b.skipped for b in blocks] == [False, True, False, False]
    assert blocks[0].code == "a = 1\n" and blocks[0].line == 4
    assert blocks[2].code == "b = a + 1\n"  # dedented out of the admonition
    assert blocks[3].code == "c = '''\n```\n'''\n"  # a longer fence contains a shorter one
    namespace: dict[str, object] = {}
    for block in blocks:
        if not block.skipped:
            exec(block.code, namespace)
    assert namespace["b"] == 2


def test_failing_block_names_page_block_and_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n```python\nx = 1\n```\n\n```python\ny = 2\nz = x / 0\n```\n")
    with pytest.raises(pytest.fail.Exception) as failure:
        run_page(page)
    message = str(failure.value)
    assert "python block 2 (starting at line 8)" in message
    assert "ZeroDivisionError" in message
    assert f'File "{page}", line 9' in message


def test_skip_markers_are_placed_and_justified() -> None:
    """A marker that skips nothing (e.g. after an edit moved the block) or gives no reason fails."""
    for page in _pages():
        text = page.read_text()
        markers = [line for line in text.splitlines() if _ANY_MARKER.search(line)]
        for line in markers:
            assert SKIP_MARKER.match(line.strip()), (
                f"docs/{_page_id(page)}: malformed marker {line.strip()!r}; write "
                "'<!-- docs-test: skip: REASON -->'"
            )
        skipped = sum(block.skipped for block in extract_blocks(text))
        assert len(markers) == skipped, (
            f"docs/{_page_id(page)}: a skip marker is not the last line before a python block"
        )
