"""The taxonomy: raw detection class names and condition attributes -> MVTec category and defect folders.

A taxonomy file is JSON::

    {
      "name": "insplad-fault",
      "categories": {
        "<category folder>": {"title": "Nice Name", "classes": ["raw-class", "alias", ...],
                              "defects": ["<defect folder>", ...]},
        ...
      },
      "conditions": {"normal": ["good", "ok", ...], "<defect folder>": ["alias", ...], ...},
      "ignore": ["raw-class-not-used", ...]
    }

Names are matched case-insensitively with any run of spaces, hyphens, underscores or other
punctuation treated alike, so ``Glass_Insulator``, ``glass insulator`` and ``glass-insulator`` are
the same class. A category's folder name and title are always accepted as class names, and a
condition's own name is always accepted as an alias of itself. Conditions named ``normal``
(and an absent attribute) mean a flawless object.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from insplad_tools.errors import InspladError

NORMAL = "normal"
GOOD = "good"
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KNOWN_KEYS = {"name", "description", "categories", "conditions", "ignore"}


class UnknownClassError(InspladError):
    """A raw class name that the taxonomy neither maps nor ignores."""


class UnknownConditionError(InspladError):
    """A condition attribute the taxonomy does not know, or one not allowed for a category."""


def name_key(raw: str) -> str:
    """Canonical matching key: accents dropped (``corrosão`` = ``corrosao``), lowercase, every run of
    non-alphanumerics collapsed to one hyphen."""
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^0-9a-z]+", "-", ascii_text.strip().lower()).strip("-")


@dataclass(frozen=True)
class Taxonomy:
    """Maps raw class names / conditions to (category folder, defect folder)."""

    categories: dict[str, tuple[str, ...]]
    name: str = "custom"
    titles: dict[str, str] = field(default_factory=dict)
    class_index: dict[str, str] = field(default_factory=dict, repr=False)
    condition_index: dict[str, str] = field(default_factory=dict, repr=False)
    ignore: frozenset[str] = field(default_factory=frozenset, repr=False)
    digest: str = ""

    def category_of(self, raw_class: str) -> str | None:
        """Category folder of a raw class, ``None`` when it is ignored; raises :class:`UnknownClassError`."""
        key = name_key(raw_class)
        if key in self.class_index:
            return self.class_index[key]
        if key in self.ignore:
            return None
        raise UnknownClassError(f"unknown class {raw_class!r} (not in taxonomy {self.name}: map it to one of "
                                f"{', '.join(self.categories)} or list it under 'ignore' in a --taxonomy file)")

    def normalize_condition(self, raw: str | None) -> str | None:
        """Alias-resolved condition name (a defect folder name) or ``None`` for a normal object."""
        if raw is None or not str(raw).strip():
            return None
        key = name_key(str(raw))
        if key not in self.condition_index:
            raise UnknownConditionError(f"unknown condition {raw!r} (known: {', '.join(sorted(set(self.condition_index.values())))})")
        resolved = self.condition_index[key]
        return None if resolved == NORMAL else resolved

    def defect_of(self, category: str, condition: str | None) -> str:
        """``"good"`` or the defect folder for a condition (raw or normalized) of an object of ``category``."""
        if category not in self.categories:
            raise InspladError(f"unknown category {category!r} (taxonomy {self.name} has {', '.join(self.categories)})")
        defect = self.normalize_condition(condition)
        if defect is None:
            return GOOD
        if defect not in self.categories[category]:
            raise UnknownConditionError(f"condition {condition!r} is not a defect type of {category} "
                                        f"(allowed: {', '.join(self.categories[category])})")
        return defect

    def title(self, category: str) -> str:
        return self.titles.get(category) or category.replace("_", " ").title()

    @property
    def defect_types(self) -> list[str]:
        """Every defect folder name, sorted."""
        return sorted({d for defects in self.categories.values() for d in defects})


def _str_list(value: object, where: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InspladError(f"{source}: {where} must be a list of non-empty strings")
    return value


def taxonomy_from_dict(data: object, source: str = "<taxonomy>") -> Taxonomy:
    """Validate a taxonomy document and build the lookup tables; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise InspladError(f"{source}: a taxonomy must be a JSON object")
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise InspladError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_KNOWN_KEYS))})")
    cats = data.get("categories")
    if not isinstance(cats, dict) or not cats:
        raise InspladError(f"{source}: 'categories' must be a non-empty object of category folder -> spec")
    conditions = data.get("conditions", {})
    if not isinstance(conditions, dict):
        raise InspladError(f"{source}: 'conditions' must be an object of condition -> list of aliases")
    condition_index: dict[str, str] = {}

    def add_condition(alias: str, target: str) -> None:
        key = name_key(alias)
        if not key:
            raise InspladError(f"{source}: condition alias {alias!r} is empty after normalisation")
        if condition_index.get(key, target) != target:
            raise InspladError(f"{source}: condition alias {alias!r} maps to both {condition_index[key]} and {target}")
        condition_index[key] = target

    add_condition(NORMAL, NORMAL)
    for target, aliases in conditions.items():
        if not _FOLDER.match(target) or target == GOOD:
            raise InspladError(f"{source}: condition {target!r} is not a usable folder name")
        add_condition(target, target)
        for alias in _str_list(aliases, f"conditions.{target}", source):
            add_condition(alias, target)

    categories: dict[str, tuple[str, ...]] = {}
    titles: dict[str, str] = {}
    class_index: dict[str, str] = {}
    for folder, spec in cats.items():
        if not isinstance(folder, str) or not _FOLDER.match(folder):
            raise InspladError(f"{source}: category {folder!r} is not a usable folder name")
        if not isinstance(spec, dict):
            raise InspladError(f"{source}: categories.{folder} must be an object with 'classes' and 'defects'")
        extra = set(spec) - {"title", "classes", "defects"}
        if extra:
            raise InspladError(f"{source}: categories.{folder}: unknown key(s) {', '.join(sorted(extra))}")
        defects = _str_list(spec.get("defects", []), f"categories.{folder}.defects", source)
        for defect in defects:
            if not _FOLDER.match(defect) or defect in (GOOD, NORMAL):
                raise InspladError(f"{source}: categories.{folder}: {defect!r} is not a usable defect folder name")
            add_condition(defect, defect)
        if len(set(defects)) != len(defects):
            raise InspladError(f"{source}: categories.{folder}: duplicate defect names")
        categories[folder] = tuple(defects)
        title = spec.get("title")
        if title is not None and not isinstance(title, str):
            raise InspladError(f"{source}: categories.{folder}.title must be a string")
        titles[folder] = title or folder.replace("_", " ").title()
        names = [folder, titles[folder], *_str_list(spec.get("classes", []), f"categories.{folder}.classes", source)]
        for raw in names:
            key = name_key(raw)
            if class_index.get(key, folder) != folder:
                raise InspladError(f"{source}: class name {raw!r} maps to both {class_index[key]} and {folder}")
            class_index[key] = folder
    ignore = frozenset(name_key(n) for n in _str_list(data.get("ignore", []), "ignore", source))
    clash = sorted(ignore & set(class_index))
    if clash:
        raise InspladError(f"{source}: class(es) {', '.join(clash)} are both mapped and ignored")
    name = data.get("name", "custom")
    if not isinstance(name, str) or not name:
        raise InspladError(f"{source}: 'name' must be a non-empty string")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return Taxonomy(categories=categories, name=name, titles=titles, class_index=class_index,
                    condition_index=condition_index, ignore=ignore,
                    digest=hashlib.sha256(canonical.encode()).hexdigest())


def builtin_taxonomy_text() -> str:
    return resources.files("insplad_tools").joinpath("taxonomy", "insplad.json").read_text(encoding="utf-8")


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """The built-in InsPLAD-fault taxonomy, or the one in ``path`` (a JSON file, see module doc)."""
    if path is None:
        return taxonomy_from_dict(json.loads(builtin_taxonomy_text()), "built-in taxonomy")
    path = Path(path)
    from insplad_tools.jsonfile import load_json

    return taxonomy_from_dict(load_json(path, f"{path} (taxonomy)", max_bytes=16 << 20), str(path))
