"""The label vocabulary of the unified-parsing segmenter: one numbering for objects, parts and
materials, read from the model's `labels.json`.

Label numbering (`LabelSpace.concepts`), with N objects and M materials besides '-', mult = 5 with
quad else 1:
  0 '-'; 1..N objects; N+l, 2N+l, 3N+l, 4N+l the quad labels `{object}-t`, `-l`, `-b`, `-r`
  (category 'part'); mult*N+1 .. mult*N+M materials; then the part names that are not object
  names, numbered in first-seen order over the owners. A part that is also an object name (a
  building's 'door') takes that object's label; a part '-' means no part (label 0). Owners are
  sky, building, person (the original's choice), or with `all_parts` every owner in the order of
  `labels['object_part']`. The decoder's part logits are per owner in ascending object index; this
  port maps each owner to its own slice (the original assumes the two orders agree).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from jaxdissect import smallfile

# The only owners whose parts netdissect's GAN dissection uses, in its numbering order.
DEFAULT_PART_OWNERS = ("sky", "building", "person")
QUAD_SUFFIXES = ("t", "l", "b", "r")  # label offsets N, 2N, 3N, 4N
CATEGORIES = ("object", "part", "material")  # the original's category list, in its order
MAX_LABELS_BYTES = 16 << 20  # the published labels.json is 20 kB; refused unread beyond this


class LabelsError(ValueError):
  """A `labels.json` (or labels dict) the segmenter cannot use; one line naming it."""


class Owner(NamedTuple):
  """An object whose parts are labelled: its object label, which of the decoder's per-owner
  part slices holds its parts, and each part's label (0 for '-')."""

  name: str
  label: int
  slice: int
  part_labels: tuple[int, ...]


class LabelSpace(NamedTuple):
  """Everything the labelling needs from `labels.json` and the options (hashable, static)."""

  num_objects: int  # N, objects besides '-'
  num_materials: int  # M, materials besides '-'
  mult: int  # 5 with quad labels, else 1
  part_slices: tuple[int, ...]  # parts per owner, in decoder order (ascending object index)
  owners: tuple[Owner, ...]  # the owners whose parts are labelled, in numbering order
  concepts: tuple[tuple[str, str], ...]

  @property
  def quad(self) -> bool:
    return self.mult == 5

  @property
  def heads(self) -> tuple[int, int, int]:
    """Output channels of the object, part and material heads."""
    return self.num_objects + 1, sum(self.part_slices), self.num_materials + 1

  @property
  def material_offset(self) -> int:
    return self.mult * self.num_objects


def read_labels(path: str) -> dict[str, Any]:
  """The `labels.json` of a unified-parsing model: `object`, `material`, `object_part`, ...

  Raises LabelsError naming `path` for a file that is unreadable, too large, not JSON (or nested
  beyond the parser's depth) or not shaped as check_labels requires.
  """
  try:
    labels = smallfile.read_json(path, MAX_LABELS_BYTES, "labels.json")
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    raise LabelsError(f"{path}: not a readable labels.json ({type(e).__name__}: "
                      f"{smallfile.one_line(e)})") from None
  check_labels(labels, path)
  return labels


def check_labels(labels: Mapping[str, Any], where: str = "labels") -> None:
  """Raises LabelsError unless `labels` has the keys and structure the segmenter relies on:
  `object` and `material` lists of names starting with '-', `object_part` mapping owners from
  the object list to lists of part names."""
  if not isinstance(labels, Mapping):
    raise LabelsError(f"{where} is a {type(labels).__name__}, not a JSON object")
  for key in ("object", "material", "object_part"):
    if key not in labels:
      keys = ", ".join(repr(k)[:40] for k in list(labels)[:20])
      raise LabelsError(f"{where} has no {key!r} entry; keys are: {keys}")
  for key in ("object", "material"):
    names = labels[key]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
      raise LabelsError(f"{where}: {key!r} should be a list of names")
    if not names or names[0] != "-":
      raise LabelsError(f"{where}: {key!r} list must start with '-', got "
                        f"{[n[:40] for n in names[:3]]!r}...")
  parts = labels["object_part"]
  if not isinstance(parts, Mapping) or not all(
      isinstance(v, list) and all(isinstance(p, str) for p in v) for v in parts.values()):
    raise LabelsError(f"{where}: 'object_part' should map owners to lists of part names")
  objects = set(labels["object"])
  unknown = [o for o in parts if o not in objects]
  if unknown:
    owners = ", ".join(repr(o)[:40] for o in unknown[:5])
    raise LabelsError(f"{where}: object_part owner(s) {owners} are not in the object list")


def label_space(labels: Mapping[str, Any], *, quad: bool = True,
                all_parts: bool = False) -> LabelSpace:
  """The label numbering of `labels` (see the module docstring) with or without quad labels."""
  check_labels(labels)
  objects, materials = list(labels["object"]), list(labels["material"])
  object_part = labels["object_part"]
  n, m, mult = len(objects) - 1, len(materials) - 1, 5 if quad else 1
  index = {name: i for i, name in enumerate(objects)}
  decoder_order = sorted(object_part, key=index.__getitem__)
  used = list(object_part) if all_parts else list(DEFAULT_PART_OWNERS)
  missing = [o for o in used if o not in object_part]
  if missing:
    raise ValueError(f"part owner(s) {', '.join(map(repr, missing))} have no parts in "
                     f"labels['object_part'] (owners: {', '.join(map(repr, object_part))}); "
                     f"use all_parts=True for other label sets")
  part_numbers: dict[str, int] = {}
  first_part = mult * n + 1 + m
  owners = []
  for name in used:
    numbers = []
    for part in object_part[name]:
      if part in index:
        numbers.append(index[part])
      else:
        numbers.append(part_numbers.setdefault(part, first_part + len(part_numbers)))
    owners.append(Owner(name, index[name], decoder_order.index(name), tuple(numbers)))
  concepts = ([(o, "object") for o in objects]
              + [(f"{o}-{s}", "part") for s in (QUAD_SUFFIXES if quad else ()) for o in objects[1:]]
              + [(mat, "material") for mat in materials[1:]]
              + [(p, "part") for p in part_numbers])
  return LabelSpace(n, m, mult, tuple(len(object_part[o]) for o in decoder_order), tuple(owners),
                    tuple(concepts))
