"""YAML that cannot hang, surprise or crash the tool: the one loader for recipes (and any other YAML
the user gives: platform profiles).

PyYAML's `safe_load` runs no code, but it still expands aliases (a few hundred bytes of `&a`/`*a`
grow exponentially: the "billion laughs"), silently keeps the last of two equal keys, builds ints of
any length (Python then refuses to print them: a traceback) and recurses once per nesting level.
This loader sits on `yaml.SafeLoader` and refuses, while composing and before anything is built:

- aliases that expand past `MAX_EXPANDED` values or `MAX_DEPTH` levels, or into themselves (a loop),
  counted on the composed graph before anything is built, so the work stays linear in the
  document's size (aliases themselves are kept: `yaml.safe_dump` writes them for shared values);
- a key given twice in one mapping, and merge keys (`<<`);
- nesting deeper than `MAX_DEPTH`;
- a scalar longer than `MAX_SCALAR_CHARS`, an integer of more than `MAX_INT_DIGITS` digits;
- explicit tags other than the plain JSON-like ones (`!!binary`, `!!set`, `!!timestamp`, `!foo`...);
- a document longer than `MAX_DOCUMENT_BYTES` (`read_document`).

Every refusal is a `UserError` of one line naming the source and the line. With all of these the
time to load is bounded by the document's size (about a second for the largest allowed).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor

from .errors import UserError

MAX_DOCUMENT_BYTES = 64 * 1024   # the built-in recipes are under 2 KiB
MAX_SCALAR_CHARS = 8192          # room for any path (PATH_MAX is 4096)
MAX_INT_DIGITS = 4300            # Python's own int<->str limit (sys.get_int_max_str_digits)
MAX_DEPTH = 32                   # recipes nest about 5 deep (same bound as recipe.MAX_DEPTH)
MAX_EXPANDED = 10_000            # values once aliases are expanded; a recipe holds about 100
MAX_EXPANDED_CHARS = 1_000_000   # characters of all scalars once aliases are expanded

_CORE = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))
_INT_LIMIT = 10 ** MAX_INT_DIGITS


def _refuse(source: str, mark: yaml.Mark | None, what: str) -> UserError:
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return UserError(f"{source}: {where}{what}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that checks each event before composing it (see the module docstring)."""

    def __init__(self, stream: str, source: str, what: str = "recipe"):
        super().__init__(stream)
        self.source, self.what = source, what
        self.depth = 0
        self.open_anchors: set[str] = set()
        self.aliased = False

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.open_anchors:
                raise _refuse(self.source, mark, f"YAML alias *{event.anchor} is inside the value it names (a loop); "
                                                 "write the value out")
            self.aliased = True
            return super().compose_node(parent, index)    # the same node again: nothing is copied
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in ALLOWED_TAGS:
            raise _refuse(self.source, mark, f"YAML tag {_tag(tag)} is not allowed in a "
                                             f"{self.what}; write a plain value without a tag")
        if isinstance(event, yaml.ScalarEvent):
            if len(event.value) > MAX_SCALAR_CHARS:
                raise _refuse(self.source, mark, f"a value of {len(event.value)} characters is too long for a "
                                                 f"{self.what} (at most {MAX_SCALAR_CHARS})")
            return super().compose_node(parent, index)
        self.depth += 1
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        try:
            if self.depth > MAX_DEPTH:
                raise _refuse(self.source, mark, f"nested too deeply (more than {MAX_DEPTH} levels) for a "
                                                 f"{self.what}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self.open_anchors.discard(event.anchor)

    def get_single_data(self):  # noqa: ANN201 - PyYAML's signature
        node = self.get_single_node()
        if node is None:
            return None
        if self.aliased:
            self._check_expansion(node)
        return self.construct_document(node)

    def _check_expansion(self, root: yaml.Node) -> None:
        """Refuse aliases that would expand past MAX_EXPANDED values or MAX_DEPTH levels. The composed
        graph shares nodes (linear in the text); whoever walks the built value (validation, digests)
        walks the expansion, which a few hundred bytes can make exponential ("billion laughs").
        Sizes are counted once per node (memoised, iterative), so this check is linear too."""
        memo: dict[int, tuple[int, int, int]] = {}     # id(node) -> (values, depth, characters)
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in memo:
                continue
            kids = _children(node)
            if not ready:
                stack.append((node, True))
                stack.extend((k, False) for k in kids if id(k) not in memo)
                continue
            if isinstance(node, yaml.ScalarNode):
                memo[id(node)] = (1, 0, len(node.value))
                continue
            size = 1 + sum(memo[id(k)][0] for k in kids)
            depth = 1 + max((memo[id(k)][1] for k in kids), default=0)
            chars = sum(memo[id(k)][2] for k in kids)
            memo[id(node)] = (size, depth, chars)
            if size > MAX_EXPANDED or chars > MAX_EXPANDED_CHARS:
                raise _refuse(self.source, node.start_mark,
                              f"YAML aliases here expand to {size:,} values of {chars:,} characters (at most "
                              f"{MAX_EXPANDED:,} and {MAX_EXPANDED_CHARS:,}); write the values out or alias less")
            if depth > MAX_DEPTH:
                raise _refuse(self.source, node.start_mark, f"nested too deeply (more than {MAX_DEPTH} levels, "
                                                            f"aliases expanded) for a {self.what}")

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _CORE + "merge":
                    raise _refuse(self.source, key_node.start_mark, "YAML merge keys (<<) are not allowed in a "
                                                                    f"{self.what}; write the keys out in full")
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:       # an unhashable key: SafeConstructor names it
                    continue
                if first is not None:
                    raise _refuse(self.source, key_node.start_mark,
                                  f"key {_short(str(key))} appears twice in one mapping (first at line {first}); "
                                  "keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """SafeConstructor's int, refusing one too long to build or to print back (Python refuses
    str() of an int over 4,300 digits, so an error message quoting it would itself crash)."""
    digits = sum(c.isdigit() for c in node.value)
    if digits > MAX_INT_DIGITS:
        raise _refuse(loader.source, node.start_mark, f"a number of {digits} digits is too large for a "
                                                      f"{loader.what} (at most {MAX_INT_DIGITS})")
    try:
        value = SafeConstructor.construct_yaml_int(loader, node)
    except (ValueError, IndexError):      # `!!int ''`, `!!int 0b`
        raise _refuse(loader.source, node.start_mark, f"not a number a {loader.what} can hold") from None
    if abs(value) >= _INT_LIMIT:       # e.g. a long hexadecimal or base-60 (1:2:3) number
        raise _refuse(loader.source, node.start_mark, f"a number over {MAX_INT_DIGITS} digits is too large for "
                                                      f"a {loader.what}")
    return value


_Loader.add_constructor(_CORE + "int", _construct_int)


def _tag(tag: str) -> str:
    return _short("!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag)


def _short(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")


def load(text: str, source: str, *, what: str = "recipe") -> object:
    """Parse one YAML document with the refusals above; any failure is one UserError line naming
    `source` and the line (`what` names the kind of document in messages). None for an empty one."""
    if len(text) > MAX_DOCUMENT_BYTES:    # characters >= bytes/4: a cheap bound before encoding
        _check_size(len(text.encode("utf-8", "surrogatepass")), source, what)
    loader = None
    try:
        loader = _Loader(text, source, what)   # refuses control characters (NUL, ESC...) at once
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        if isinstance(e, yaml.reader.ReaderError):
            where = f" at line {text.count(chr(10), 0, e.position) + 1}"
            problem = f"character #x{e.character:04x} is not allowed in YAML" if isinstance(e.character, int) \
                else "not UTF-8 text"
        else:
            problem = getattr(e, "problem", None) or str(e)
        raise UserError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:   # unreachable with MAX_DEPTH; kept so no input can end in a traceback
        raise UserError(f"{source}: nested too deeply to be a {what}") from None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. `!!int` on an empty value, `!!bool maybe`: PyYAML's
        # constructors raise IndexError/KeyError/ValueError on such input; it is still the user's text
        raise UserError(f"{source}: cannot be read as YAML ({type(e).__name__}); check the tags and values") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_size(size: int, source: str, what: str = "recipe") -> None:
    if size > MAX_DOCUMENT_BYTES:
        raise UserError(f"{source}: {size} bytes is too long for a {what} (at most {MAX_DOCUMENT_BYTES}); "
                        "is this the right file?")


def read_document(path: str | Path, source: str | None = None, *, what: str = "recipe") -> str:
    """The text of a YAML file (a `what`), read with every failure one UserError line: a name the file system
    refuses (too long, NUL), a folder or device or FIFO (never opened: reading /dev/zero or a FIFO
    would hang), a file over MAX_DOCUMENT_BYTES (refused before reading it), or text that is not UTF-8."""
    source = source or str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{source}: not a regular file; give the path of a YAML {what}")
        _check_size(st.st_size, source, what)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):   # swapped since the stat
                raise UserError(f"{source}: not a regular file; give the path of a YAML {what}")
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{source}: {what} file not found") from None
    except (OSError, ValueError) as e:     # ValueError: a NUL in the path
        raise UserError(f"{source}: cannot read the {what} ({_reason(e)})") from None
    _check_size(len(data), source, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not UTF-8 text (byte {e.start}); save the {what} as UTF-8") from None


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or type(e).__name__
