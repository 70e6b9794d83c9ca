"""A Griffe extension that lets kseq's docstrings render on the site as they read in the source.

kseq's docstrings follow Keras's Google style with two habits that mkdocstrings does not read:

- ``Example:`` (singular) opens the runnable example. Griffe parses only ``Examples:`` into
  code blocks (``Example:`` becomes an admonition whose ``>>>`` lines would render as prose),
  so the heading is read as ``Examples:``.
- One Args entry may document several parameters, ``workers, use_multiprocessing: as for ...``.
  Griffe reads one name per entry, so the entry is split into one per name, each with the text.
- Cross-references are Sphinx roles, ``:class:`~kseq.errors.StructureError```, ``:meth:`close```.
  Each becomes an autorefs link. The target is resolved here the way Python would read the name
  in the docstring's scope (the object, its class with inherited members, its module and its
  imports); a target that names nothing in kseq is a broken reference and a warning, which
  ``mkdocs build --strict`` turns into a failed build. A target in the public API (a name in
  ``kseq.__all__``, or a public member of one) must be on an API page, or autorefs fails the
  build too; a private helper is linked when some page shows it, and shown as code otherwise.
  A name that is not in the docstring's scope is looked up as a suffix of every path in the
  package, as Sphinx does, and used when exactly one object matches.

Only the text handed to mkdocstrings changes; the source files stay as they are.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import griffe

_logger = griffe.get_logger("griffe_kseq")

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`(?P<tilde>~?)(?P<target>[\w.]+)`")
_EXAMPLE_HEADING = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", flags=re.MULTILINE)
_ARGS_HEADING = re.compile(r"^(?P<indent>[ \t]*)(?:Args|Arguments|Parameters|Keyword Args|Other Parameters):[ \t]*$")
_MULTI_PARAM = re.compile(r"^(?P<indent>[ \t]+)(?P<names>\*{0,2}\w+(?:,[ \t]*\*{0,2}\w+)+):(?P<desc>.*)$")


class KseqDocstrings(griffe.Extension):
    """Rewrite ``Example:`` headings and Sphinx roles in every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:  # noqa: ARG002
        public = _public_paths(pkg)
        objects = list(_walk(pkg))
        paths = [obj.path for obj in objects]
        for obj in objects:
            docstring = obj.docstring
            if docstring is None:
                continue
            text = _split_multi_params(_EXAMPLE_HEADING.sub(r"\g<indent>Examples:", docstring.value))
            link = functools.partial(_link, obj=obj, loader=loader, public=public, paths=paths)
            docstring.value = _ROLE.sub(link, text)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


def _split_multi_params(text: str) -> str:
    """``a, b: text`` in an Args section becomes ``a: text`` and ``b: text`` (with continuation lines)."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        heading = _ARGS_HEADING.match(line)
        if heading:
            section_indent = len(heading["indent"])
        elif line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        multi = _MULTI_PARAM.match(line) if section_indent is not None else None
        if multi is None:
            out.append(line)
            i += 1
            continue
        rest = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            rest.append(lines[i])
            i += 1
        blanks = 0
        while rest and not rest[-1].strip():
            rest.pop()
            blanks += 1
        for name in (n.strip() for n in multi["names"].split(",")):
            out.append(f"{multi['indent']}{name}:{multi['desc']}")
            out.extend(rest)
        out.extend([""] * blanks)
    return "\n".join(out)


def _public_paths(pkg: griffe.Module) -> set[str]:
    """Canonical paths of the public API: each name in ``__all__`` and its public members, recursively."""
    paths: set[str] = set()

    def add(obj: Any) -> None:
        target = obj.final_target if obj.is_alias else obj
        if target.path in paths:
            return
        paths.add(target.path)
        if target.is_module:
            names = [str(n) for n in (target.exports or [])]
            members = [target.members[n] for n in names if n in target.members]
        elif target.is_class:
            # own members only: API pages do not render inherited ones
            members = [m for n, m in target.members.items() if not n.startswith("_") and m.docstring]
        else:
            members = []
        for member in members:
            add(member)

    for name in pkg.exports or []:
        if str(name) in pkg.members and not str(name).startswith("__"):
            add(pkg.members[str(name)])
    return paths


def _lookup(path: str, loader: griffe.GriffeLoader) -> Any:
    try:
        obj = loader.modules_collection[path]
        target = obj.final_target if obj.is_alias else obj
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return target


def _resolve(target: str, obj: griffe.Object, loader: griffe.GriffeLoader, paths: list[str]) -> str | None:
    """The canonical path ``target`` names in ``obj``'s docstring, or None."""
    found = _lookup(target, loader)
    if found is not None:
        return found.path
    head, _, rest = target.partition(".")
    scope: Any = obj
    while scope is not None:
        members = scope.all_members if scope.is_class else scope.members
        if head in members:
            member = members[head]
            base = member.target_path if member.is_alias else member.path
            found = _lookup(f"{base}.{rest}" if rest else base, loader)
            return None if found is None else found.path
        scope = scope.parent
    matches = {p for p in paths if p.endswith(f".{target}")}
    return matches.pop() if len(matches) == 1 else None


def _link(
    match: re.Match, *, obj: griffe.Object, loader: griffe.GriffeLoader, public: set[str], paths: list[str]
) -> str:
    target = match["target"]
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    path = _resolve(target, obj, loader, paths)
    if path is None:
        where = f"{obj.relative_filepath}:{obj.docstring.lineno if obj.docstring else obj.lineno}"
        _logger.warning(f"{where}: broken cross-reference {match[0]} in {obj.path}: no such object in kseq")
        return f"`{shown}`"
    optional = "" if path in public else " optional"
    return f'<autoref identifier="{path}"{optional}><code>{shown}</code></autoref>'
